-- A contact the team blocked (`PATCH /api/contacts/{id}` `{"blocked":
-- true}`): when, and by whom. Their messages are still kept, quietly
-- (`inbox::contacts`). Nullable without a default: a catalogue-only
-- change (no rewrite of a large table).
ALTER TABLE contacts
    ADD COLUMN IF NOT EXISTS blocked_at TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS blocked_by BIGINT;
-- `GET /api/contacts?blocked=true`: the few blocked contacts, without
-- walking every contact.
CREATE INDEX IF NOT EXISTS contacts_blocked ON contacts (id) WHERE blocked_at IS NOT NULL;
