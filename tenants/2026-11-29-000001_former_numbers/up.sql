-- The numbers WhatsApp customers had before they changed them. A message
-- sent from the old number before the change (Meta may deliver it after
-- the notice, in a later webhook) belongs to the contact that now has the
-- new one; one sent after the change is someone else's (numbers are
-- recycled, and a number may change hands more than once).
CREATE TABLE contact_former_numbers (
    channel_id  BIGINT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    external_id TEXT NOT NULL,
    contact_id  BIGINT NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    changed_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (channel_id, external_id, changed_at)
);
CREATE INDEX contact_former_numbers_contact ON contact_former_numbers (contact_id);
