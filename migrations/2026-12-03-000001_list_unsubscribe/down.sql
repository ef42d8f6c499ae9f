ALTER TABLE public.mail_outbox DROP COLUMN IF EXISTS list_unsubscribe;
