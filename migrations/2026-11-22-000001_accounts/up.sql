-- The shared `public` schema: tenants, global users, memberships, refresh
-- tokens, and the guard every tenant transaction starts with.

CREATE TABLE public.tenants (
    id             BIGSERIAL PRIMARY KEY,
    slug           TEXT NOT NULL UNIQUE,
    name           TEXT NOT NULL,
    schema_name    TEXT NOT NULL UNIQUE CHECK (schema_name ~ '^[a-z][a-z0-9_]{1,47}$'),
    status         TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    -- Newest tenant migration applied to the schema; NULL while provisioning.
    -- Lets `migrate` skip current schemas with one query for all tenants.
    schema_version TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX tenants_schema_version_idx ON public.tenants (schema_version);

CREATE TABLE public.users (
    id            BIGSERIAL PRIMARY KEY,
    email         TEXT NOT NULL,
    name          TEXT NOT NULL DEFAULT '',
    password_hash TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON public.users (lower(email));

CREATE TABLE public.memberships (
    user_id    BIGINT NOT NULL REFERENCES public.users (id) ON DELETE CASCADE,
    tenant_id  BIGINT NOT NULL REFERENCES public.tenants (id) ON DELETE CASCADE,
    role       TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'agent', 'viewer')),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, tenant_id)
);
CREATE INDEX memberships_tenant_idx ON public.memberships (tenant_id, role);

CREATE TABLE public.refresh_tokens (
    id         BIGSERIAL PRIMARY KEY,
    token_hash BYTEA NOT NULL UNIQUE,
    family_id  TEXT NOT NULL,
    user_id    BIGINT NOT NULL REFERENCES public.users (id) ON DELETE CASCADE,
    tenant_id  BIGINT NOT NULL REFERENCES public.tenants (id) ON DELETE CASCADE,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX refresh_tokens_family_idx ON public.refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_tenant_idx ON public.refresh_tokens (user_id, tenant_id);

-- Every tenant unit of work begins with this call, piggybacked on BEGIN (one
-- round trip). It refuses unknown, suspended or not-yet-migrated tenants and,
-- for requests made by a member, a membership whose role is no longer the one
-- in the token. Then it points the search path at the tenant's schema for
-- this transaction only (is_local = true), quoting the identifier.
-- Maintenance work (Meta's data-deletion callback, key rotation) passes
-- p_allow_suspended so it reaches suspended tenants too.
CREATE FUNCTION public.sb_enter_tenant(p_tenant BIGINT, p_min_version TEXT, p_user BIGINT, p_role TEXT,
                                       p_allow_suspended BOOLEAN)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    t public.tenants%ROWTYPE;
    m_role TEXT;
BEGIN
    SELECT * INTO t FROM public.tenants WHERE id = p_tenant;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'switchboard:tenant_not_found';
    END IF;
    IF t.status <> 'active' AND NOT p_allow_suspended THEN
        RAISE EXCEPTION 'switchboard:tenant_suspended';
    END IF;
    IF t.schema_version IS NULL OR t.schema_version < p_min_version THEN
        RAISE EXCEPTION 'switchboard:tenant_not_ready';
    END IF;
    IF p_user IS NOT NULL THEN
        SELECT role INTO m_role FROM public.memberships WHERE user_id = p_user AND tenant_id = p_tenant;
        IF m_role IS DISTINCT FROM p_role THEN
            RAISE EXCEPTION 'switchboard:membership_changed';
        END IF;
    END IF;
    PERFORM pg_catalog.set_config('search_path', pg_catalog.quote_ident(t.schema_name) || ', public', true);
END
$$;
