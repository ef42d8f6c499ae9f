-- Single-use WebSocket tickets (browsers cannot send headers on an
-- upgrade): stored hashed, valid 30 seconds, spent on connect.
CREATE TABLE public.ws_tickets (
    ticket_hash BYTEA PRIMARY KEY,
    tenant_id   BIGINT NOT NULL REFERENCES public.tenants (id) ON DELETE CASCADE,
    user_id     BIGINT NOT NULL,
    role        TEXT NOT NULL,
    family      TEXT NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    used_at     TIMESTAMPTZ
);
CREATE INDEX ws_tickets_expiry_idx ON public.ws_tickets (expires_at);
