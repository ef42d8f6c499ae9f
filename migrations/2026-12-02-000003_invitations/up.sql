-- Invitations to join a tenant (`auth::invitations`): an admin names an
-- email and a role; whoever holds the link sets their password (or, for
-- someone who has an account, gives it) and becomes a member. Only a
-- SHA-256 of the token is kept. An accepted invitation stays until
-- housekeeping, so a retried accept gets the same answer.
CREATE TABLE IF NOT EXISTS public.invitations (
    id          BIGSERIAL PRIMARY KEY,
    tenant_id   BIGINT NOT NULL REFERENCES public.tenants (id) ON DELETE CASCADE,
    email       TEXT NOT NULL,
    role        TEXT NOT NULL,
    token_hash  BYTEA NOT NULL UNIQUE,
    invited_by  BIGINT REFERENCES public.users (id) ON DELETE SET NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL,
    accepted_at TIMESTAMPTZ,
    accepted_by BIGINT REFERENCES public.users (id) ON DELETE SET NULL
);
-- One live invitation per email and tenant: inviting again replaces it.
CREATE UNIQUE INDEX IF NOT EXISTS invitations_pending_idx
    ON public.invitations (tenant_id, email) WHERE accepted_at IS NULL;
CREATE INDEX IF NOT EXISTS invitations_expiry_idx ON public.invitations (expires_at);
