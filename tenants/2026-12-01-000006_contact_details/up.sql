-- What the team knows of a customer beyond Meta's profile
-- (`PATCH /api/contacts/{id}`): an e-mail address, a phone number and a
-- note. Nullable without a default: a catalogue-only change (no rewrite).
ALTER TABLE contacts
    ADD COLUMN IF NOT EXISTS email TEXT,
    ADD COLUMN IF NOT EXISTS phone TEXT,
    ADD COLUMN IF NOT EXISTS notes TEXT;
-- Search (contacts' and conversations' `?q=`) finds a saved address or
-- number too, folded as names are. Only the few contacts the team gave one
-- are in the index, so the many that come and go with a webhook add
-- nothing to it; no pending list, as for the external ids' index.
CREATE INDEX IF NOT EXISTS contacts_details_trgm ON contacts
    USING gin (public.sb_fold(coalesce(email, '') || ' ' || coalesce(phone, '')) public.gin_trgm_ops)
    WITH (fastupdate = off)
    WHERE email IS NOT NULL OR phone IS NOT NULL;
