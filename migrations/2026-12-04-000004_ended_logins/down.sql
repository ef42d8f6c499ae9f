DROP FUNCTION public.sb_enter_tenant(BIGINT, TEXT, BIGINT, TEXT, BOOLEAN, UUID);
DROP INDEX public.refresh_tokens_ended_family_idx;
