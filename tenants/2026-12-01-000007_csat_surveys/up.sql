-- Satisfaction surveys (`inbox::csat`): one row per survey a channel sends
-- when a conversation is resolved, with the customer's rating once it
-- comes. The conversation's id leads the index: the processor looks for a
-- resolved conversation's latest survey when its customer writes.
CREATE TABLE IF NOT EXISTS csat_surveys (
    id BIGSERIAL PRIMARY KEY,
    conversation_id BIGINT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    channel_id BIGINT NOT NULL,
    -- The survey as sent (a message of the conversation's).
    message_id BIGINT,
    -- Who had the conversation, and who resolved it, when it was sent.
    assignee_id BIGINT,
    resolved_by BIGINT,
    sent_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    rating SMALLINT CHECK (rating BETWEEN 1 AND 5),
    comment TEXT,
    answered_at TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS csat_surveys_conversation_idx ON csat_surveys (conversation_id, sent_at DESC);
CREATE INDEX IF NOT EXISTS csat_surveys_sent_idx ON csat_surveys (sent_at);
