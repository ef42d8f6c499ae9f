DROP TABLE IF EXISTS public.outgoing_webhooks;
