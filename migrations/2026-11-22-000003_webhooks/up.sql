-- Trigram indexes back the inbox's text search (messages, contact names).
CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public;

-- The durable webhook inbox: a verified body is stored here before Meta
-- gets its 200; processor workers claim rows with FOR UPDATE SKIP LOCKED.
-- `next_attempt_at` doubles as the lease of a claimed row: a worker that
-- dies leaves it to be claimed again when the lease runs out.
CREATE TABLE public.webhook_events (
    id              BIGSERIAL PRIMARY KEY,
    body            BYTEA NOT NULL,
    received_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'dead')),
    attempts        INT NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error      TEXT,
    processed_at    TIMESTAMPTZ
);
-- Claims take the oldest due rows: only pending rows are indexed, so done
-- ones (kept for a while, then pruned) never slow the claim down.
CREATE INDEX webhook_events_pending_idx ON public.webhook_events (id) WHERE status = 'pending';
CREATE INDEX webhook_events_dead_idx ON public.webhook_events (id) WHERE status = 'dead';

-- Outgoing work of every tenant (sends, mark-seen), so one worker query
-- finds it without visiting schemas. Written in the tenant transaction that
-- stores the message.
CREATE TABLE public.send_queue (
    id              BIGSERIAL PRIMARY KEY,
    tenant_id       BIGINT NOT NULL REFERENCES public.tenants (id) ON DELETE CASCADE,
    message_id      BIGINT,
    conversation_id BIGINT,
    kind            TEXT NOT NULL CHECK (kind IN ('message', 'mark_seen')),
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'dead')),
    attempts        INT NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX send_queue_pending_idx ON public.send_queue (id) WHERE status = 'pending';
