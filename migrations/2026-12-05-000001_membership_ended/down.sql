-- Both guards as before: one exception for a removal and a role change.
CREATE OR REPLACE FUNCTION public.sb_enter_tenant(p_tenant BIGINT, p_min_version TEXT, p_user BIGINT, p_role TEXT,
                                                  p_allow_suspended BOOLEAN, p_login UUID)
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
    IF p_login IS NOT NULL AND EXISTS (
        SELECT 1 FROM public.refresh_tokens WHERE family_id = p_login::text AND revoked_at IS NOT NULL
    ) THEN
        RAISE EXCEPTION 'switchboard:login_ended';
    END IF;
    PERFORM pg_catalog.set_config('search_path', pg_catalog.quote_ident(t.schema_name) || ', public', true);
END
$$;

-- As it was: plpgsql of its own, so that the migration before this one
-- may drop the six-argument guard.
CREATE OR REPLACE FUNCTION public.sb_enter_tenant(p_tenant BIGINT, p_min_version TEXT, p_user BIGINT, p_role TEXT,
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
