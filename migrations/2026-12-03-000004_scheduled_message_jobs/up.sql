-- The sender also sends agents' scheduled messages (`inbox::scheduled`):
-- a `scheduled_message` job, due at the message's time, turns it into a
-- reply.
ALTER TABLE public.send_queue ADD COLUMN IF NOT EXISTS scheduled_message_id BIGINT;
ALTER TABLE public.send_queue DROP CONSTRAINT send_queue_kind_check;
ALTER TABLE public.send_queue
    ADD CONSTRAINT send_queue_kind_check
    CHECK (kind IN ('message', 'mark_seen', 'reaction', 'broadcast', 'scheduled_message')) NOT VALID;
ALTER TABLE public.send_queue VALIDATE CONSTRAINT send_queue_kind_check;
