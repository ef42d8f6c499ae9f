-- Each wait that ran past its reply target, as the overdue clock rang it
-- (`inbox::waiting::ring_overdue`), for the reports: who had it, on which
-- channel, due when. Kept like the audit log; gone with its conversation
-- (an erased contact's, a purged channel's).
CREATE TABLE IF NOT EXISTS missed_targets (
    id              BIGSERIAL PRIMARY KEY,
    conversation_id BIGINT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    channel_id      BIGINT NOT NULL,
    assignee_id     BIGINT,
    priority        TEXT,
    waiting_since   TIMESTAMPTZ NOT NULL,
    due_at          TIMESTAMPTZ NOT NULL,
    UNIQUE (conversation_id, waiting_since)
);
-- A report reads a period of them.
CREATE INDEX IF NOT EXISTS missed_targets_due_at ON missed_targets (due_at);
