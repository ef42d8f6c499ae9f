-- The sender also sends the business's reactions to customers' messages.
-- NOT VALID, then VALIDATE: the old rows are checked without blocking the
-- queue's writers (every old kind is still allowed).
ALTER TABLE public.send_queue DROP CONSTRAINT send_queue_kind_check;
ALTER TABLE public.send_queue
    ADD CONSTRAINT send_queue_kind_check CHECK (kind IN ('message', 'mark_seen', 'reaction')) NOT VALID;
ALTER TABLE public.send_queue VALIDATE CONSTRAINT send_queue_kind_check;
