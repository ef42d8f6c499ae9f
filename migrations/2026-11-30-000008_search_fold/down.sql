-- public.sb_fold stays: the tenant schemas' search indexes are built on it
-- until their own migration (2026-11-30-000003_search_fold) is reverted,
-- and up.sql replaces it in place.
DROP FUNCTION IF EXISTS public.sb_fold_contains(text);
