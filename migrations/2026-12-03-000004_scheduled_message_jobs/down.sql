DELETE FROM public.send_queue WHERE kind = 'scheduled_message';
ALTER TABLE public.send_queue DROP CONSTRAINT send_queue_kind_check;
ALTER TABLE public.send_queue
    ADD CONSTRAINT send_queue_kind_check CHECK (kind IN ('message', 'mark_seen', 'reaction', 'broadcast'));
ALTER TABLE public.send_queue DROP COLUMN IF EXISTS scheduled_message_id;
