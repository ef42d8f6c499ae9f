DROP INDEX IF EXISTS public.send_queue_pending_replies_idx;
