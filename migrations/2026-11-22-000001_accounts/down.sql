DROP FUNCTION IF EXISTS public.sb_enter_tenant(BIGINT, TEXT, BIGINT, TEXT, BOOLEAN);
DROP TABLE IF EXISTS public.refresh_tokens;
DROP TABLE IF EXISTS public.memberships;
DROP TABLE IF EXISTS public.users;
DROP TABLE IF EXISTS public.tenants;
