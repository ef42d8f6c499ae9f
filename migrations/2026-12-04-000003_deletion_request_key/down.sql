DROP INDEX IF EXISTS public.data_deletion_requests_request_key;
ALTER TABLE public.data_deletion_requests DROP COLUMN IF EXISTS request_key;
