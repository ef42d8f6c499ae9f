DROP TABLE IF EXISTS public.ws_tickets;
