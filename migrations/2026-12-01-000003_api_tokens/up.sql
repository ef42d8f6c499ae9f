-- Members' API tokens (`auth::api_tokens`): long-lived bearer credentials
-- for scripts and integrations, each acting as its member in one tenant
-- with the role the member has at each use. Only a SHA-256 of the token
-- is kept; revoking deletes the row.
CREATE TABLE IF NOT EXISTS public.api_tokens (
    id           BIGSERIAL PRIMARY KEY,
    tenant_id    BIGINT NOT NULL REFERENCES public.tenants (id) ON DELETE CASCADE,
    user_id      BIGINT NOT NULL REFERENCES public.users (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    token_hash   BYTEA NOT NULL UNIQUE,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS api_tokens_member_idx ON public.api_tokens (tenant_id, user_id);
