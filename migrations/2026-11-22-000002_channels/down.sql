DROP TABLE IF EXISTS public.data_deletion_requests;
DROP TABLE IF EXISTS public.meta_user_links;
DROP TABLE IF EXISTS public.oauth_states;
DROP TABLE IF EXISTS public.channel_routes;
