DROP INDEX IF EXISTS public.channel_routes_parent_idx;
ALTER TABLE public.channel_routes DROP COLUMN IF EXISTS parent_external_id;
