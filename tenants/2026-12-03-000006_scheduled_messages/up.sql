-- An agent's reply written now and sent later (`inbox::scheduled`). It
-- waits here, not among the messages, so lists, search, badges and the
-- waiting clock see only what the customer was sent; at `send_at` its job
-- makes it a reply (`message_id`), or ends it `cancelled` or `failed`
-- with a `reason`.
CREATE TABLE scheduled_messages (
    id                BIGSERIAL PRIMARY KEY,
    conversation_id   BIGINT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    channel_id        BIGINT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    created_by        BIGINT NOT NULL,
    text              TEXT NOT NULL,
    -- Answers to tap under it (`inbox::choices`): {options, button}.
    choices           JSONB,
    send_at           TIMESTAMPTZ NOT NULL,
    cancel_if_replied BOOLEAN NOT NULL DEFAULT false,
    status            TEXT NOT NULL DEFAULT 'scheduled'
                      CHECK (status IN ('scheduled', 'sent', 'cancelled', 'failed')),
    reason            TEXT,
    message_id        BIGINT,
    client_id         TEXT,
    job_id            BIGINT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at       TIMESTAMPTZ,
    UNIQUE (conversation_id, client_id)
);
CREATE INDEX scheduled_messages_conversation_idx ON scheduled_messages (conversation_id, send_at, id);
-- The earliest of a conversation's that wait, for the inbox list's clock.
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS next_scheduled_at TIMESTAMPTZ;
