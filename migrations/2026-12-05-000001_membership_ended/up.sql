-- The guard says why a member's token no longer fits: no membership at
-- all (removed, or never a member) or another role. Both stay
-- 'switchboard:membership_changed', which a binary of the previous release
-- still reads during an upgrade; the DETAIL tells them apart, so that a
-- removed member is told so (401 membership_revoked, a socket closed 4403)
-- and one whose role changed is told to log in again (401 token_revoked,
-- a socket closed 4401: refresh, then reconnect).
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
        IF NOT FOUND THEN
            RAISE EXCEPTION 'switchboard:membership_changed' USING DETAIL = 'removed';
        ELSIF m_role IS DISTINCT FROM p_role THEN
            RAISE EXCEPTION 'switchboard:membership_changed' USING DETAIL = 'role';
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

-- The five-argument guard (work without a login) is the six-argument one
-- without a login to check, stated once.
CREATE OR REPLACE FUNCTION public.sb_enter_tenant(p_tenant BIGINT, p_min_version TEXT, p_user BIGINT, p_role TEXT,
                                                  p_allow_suspended BOOLEAN)
RETURNS void LANGUAGE sql AS $$
    SELECT public.sb_enter_tenant(p_tenant, p_min_version, p_user, p_role, p_allow_suspended, NULL::uuid);
$$;
