DROP TABLE IF EXISTS public.senders;
