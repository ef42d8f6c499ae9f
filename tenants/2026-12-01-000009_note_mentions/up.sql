-- Members a note mentions (`inbox::mentions`): each is notified, and
-- finds the note again in `GET /api/mentions`.
CREATE TABLE IF NOT EXISTS note_mentions (
    message_id      BIGINT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    user_id         BIGINT NOT NULL,
    conversation_id BIGINT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, user_id)
);
CREATE INDEX IF NOT EXISTS note_mentions_user_idx ON note_mentions (user_id, message_id DESC);
