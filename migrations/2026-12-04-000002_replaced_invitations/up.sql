-- Links an invitation of the same email replaced (`auth::invitations`):
-- only the token's SHA-256, so the old link is answered 410
-- `invitation_replaced` ("use the newer one") rather than 404, as an
-- invitee who opens the first of two mails would otherwise be told the
-- invitation does not exist. Gone with its tenant, with a revoke of that
-- email, and by housekeeping a week past when the link would have expired.
CREATE TABLE IF NOT EXISTS public.replaced_invitations (
    token_hash  BYTEA PRIMARY KEY,
    tenant_id   BIGINT NOT NULL REFERENCES public.tenants (id) ON DELETE CASCADE,
    email       TEXT NOT NULL,
    replaced_at TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS replaced_invitations_email_idx ON public.replaced_invitations (tenant_id, email);
CREATE INDEX IF NOT EXISTS replaced_invitations_expiry_idx ON public.replaced_invitations (expires_at);
