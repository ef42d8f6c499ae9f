-- Webhooks find their tenant with one indexed lookup: (platform, external id)
-- -> (tenant, channel). A page or number is held by at most one tenant.
CREATE TABLE public.channel_routes (
    platform    TEXT NOT NULL CHECK (platform IN ('facebook', 'instagram', 'whatsapp')),
    external_id TEXT NOT NULL,
    tenant_id   BIGINT NOT NULL REFERENCES public.tenants (id) ON DELETE CASCADE,
    channel_id  BIGINT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (platform, external_id)
);
CREATE INDEX channel_routes_tenant_idx ON public.channel_routes (tenant_id);

-- One-use nonces of OAuth `state` values.
CREATE TABLE public.oauth_states (
    nonce      TEXT PRIMARY KEY,
    tenant_id  BIGINT NOT NULL REFERENCES public.tenants (id) ON DELETE CASCADE,
    user_id    BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ
);

-- Which tenants hold data of a Meta (app-scoped) user: data deletion and
-- deauthorize callbacks visit only these schemas.
CREATE TABLE public.meta_user_links (
    meta_user_id TEXT NOT NULL,
    tenant_id    BIGINT NOT NULL REFERENCES public.tenants (id) ON DELETE CASCADE,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (meta_user_id, tenant_id)
);

CREATE TABLE public.data_deletion_requests (
    confirmation_code TEXT PRIMARY KEY,
    meta_user_id      TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('received', 'completed')),
    tenants_affected  INT NOT NULL DEFAULT 0,
    channels_affected INT NOT NULL DEFAULT 0,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at      TIMESTAMPTZ
);
