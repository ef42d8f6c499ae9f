-- Meta sends a data-deletion callback again when it did not get our answer
-- in time: the same signed_request (its SHA-256, hex) gets the same
-- confirmation code. Rows from before have none.
ALTER TABLE public.data_deletion_requests ADD COLUMN IF NOT EXISTS request_key TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS data_deletion_requests_request_key
    ON public.data_deletion_requests (request_key);
