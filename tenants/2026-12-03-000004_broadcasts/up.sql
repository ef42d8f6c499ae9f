-- One approved WhatsApp template sent to many customers of one number
-- (`inbox::broadcasts`). `template` is what the admin asked for, its
-- parameters with their variables still in; each recipient's message is
-- filled in for them when it is queued.
CREATE TABLE IF NOT EXISTS broadcasts (
    id          BIGSERIAL PRIMARY KEY,
    channel_id  BIGINT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    template    JSONB NOT NULL,
    created_by  BIGINT NOT NULL,
    client_id   TEXT,
    status      TEXT NOT NULL DEFAULT 'sending' CHECK (status IN ('sending', 'done', 'cancelled', 'failed')),
    error       TEXT,
    -- The send job that carries it on; another one finding it is a stray.
    job_id      BIGINT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    UNIQUE (created_by, client_id)
);
CREATE INDEX IF NOT EXISTS broadcasts_created_idx ON broadcasts (id DESC);

-- Each number once per broadcast. `queued`: its message is stored (and
-- from then on the message's own status tells how it went); `skipped`:
-- never sent, `reason` says why.
CREATE TABLE IF NOT EXISTS broadcast_recipients (
    broadcast_id BIGINT NOT NULL REFERENCES broadcasts (id) ON DELETE CASCADE,
    number       TEXT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'queued', 'skipped')),
    reason       TEXT,
    message_id   BIGINT REFERENCES messages (id) ON DELETE SET NULL,
    done_at      TIMESTAMPTZ,
    PRIMARY KEY (broadcast_id, number)
);
CREATE INDEX IF NOT EXISTS broadcast_recipients_pending_idx
    ON broadcast_recipients (broadcast_id, number) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS broadcast_recipients_message_idx
    ON broadcast_recipients (message_id) WHERE message_id IS NOT NULL;
