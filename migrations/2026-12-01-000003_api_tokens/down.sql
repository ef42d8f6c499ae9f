DROP TABLE IF EXISTS public.api_tokens;
