-- One customer on several channels (their Messenger, Instagram and
-- WhatsApp contacts), linked by the team (`inbox::contact_links`): the
-- contacts of one person share a key. A key comes from its own sequence,
-- never from a contact's id, so a key in use is never handed out again.
CREATE SEQUENCE IF NOT EXISTS contact_people;
CREATE TABLE IF NOT EXISTS contact_links (
    contact_id BIGINT PRIMARY KEY REFERENCES contacts (id) ON DELETE CASCADE,
    person BIGINT NOT NULL,
    linked_by BIGINT,
    linked_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS contact_links_person_idx ON contact_links (person);
