DROP TABLE IF EXISTS public.password_resets;
DROP TABLE IF EXISTS public.mail_outbox;
