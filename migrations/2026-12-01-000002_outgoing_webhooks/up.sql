-- Integrators' endpoints (`integrations::webhooks`): a tenant's live
-- events, POSTed signed to a URL of theirs, in order, from a cursor. In
-- `public`, beside the other work queues, so one query finds the endpoints
-- due across tenants.
CREATE TABLE IF NOT EXISTS public.outgoing_webhooks (
    id BIGSERIAL PRIMARY KEY,
    tenant_id BIGINT NOT NULL REFERENCES public.tenants (id) ON DELETE CASCADE,
    url TEXT NOT NULL,
    -- The signing secret, encrypted as channel tokens are.
    secret_enc TEXT NOT NULL,
    -- Event types delivered; empty: all.
    event_types TEXT[] NOT NULL DEFAULT '{}',
    enabled BOOLEAN NOT NULL DEFAULT true,
    -- The last event delivered (or passed over).
    cursor_seq BIGINT NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    leased_until TIMESTAMPTZ,
    last_error TEXT,
    last_delivered_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS outgoing_webhooks_tenant_idx ON public.outgoing_webhooks (tenant_id);
CREATE INDEX IF NOT EXISTS outgoing_webhooks_due_idx ON public.outgoing_webhooks (next_attempt_at) WHERE enabled;
