DROP TABLE IF EXISTS public.send_queue;
DROP TABLE IF EXISTS public.webhook_events;
