-- A login ended (logout, "sign out everywhere", a password change, a
-- refresh token reused) stops its access tokens at once, not after their
-- 15 minutes: the tenant guard, which every member's request already
-- passes, also refuses a login whose refresh-token family was revoked.
-- The five-argument guard stays for a binary of the previous release
-- still running during an upgrade.
CREATE INDEX refresh_tokens_ended_family_idx ON public.refresh_tokens (family_id)
    WHERE revoked_at IS NOT NULL;

CREATE FUNCTION public.sb_enter_tenant(p_tenant BIGINT, p_min_version TEXT, p_user BIGINT, p_role TEXT,
                                       p_allow_suspended BOOLEAN, p_login UUID)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM public.sb_enter_tenant(p_tenant, p_min_version, p_user, p_role, p_allow_suspended);
    IF p_login IS NOT NULL AND EXISTS (
        SELECT 1 FROM public.refresh_tokens
        WHERE family_id = p_login::text AND revoked_at IS NOT NULL
    ) THEN
        RAISE EXCEPTION 'switchboard:login_ended';
    END IF;
END
$$;
