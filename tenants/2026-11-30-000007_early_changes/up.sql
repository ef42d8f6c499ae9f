-- A contact's reaction, edit or unsend that came before the message it is
-- about (after a failure Meta retries in no particular order): kept until
-- the message is stored, then applied to it (`inbox::early`). `contact` is
-- '' for edits and unsends; `value` is the emoji (NULL: removed) or the
-- edited text.
CREATE TABLE early_changes (
    channel_id  BIGINT NOT NULL,
    external_id TEXT NOT NULL,
    kind        TEXT NOT NULL,
    contact     TEXT NOT NULL DEFAULT '',
    at          TIMESTAMPTZ NOT NULL,
    value       TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (channel_id, external_id, kind, contact, at)
);
