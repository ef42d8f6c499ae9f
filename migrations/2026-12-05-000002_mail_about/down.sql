DROP INDEX IF EXISTS public.mail_outbox_unsent_about_idx;
ALTER TABLE public.mail_outbox DROP COLUMN IF EXISTS conversation_ids;
ALTER TABLE public.mail_outbox DROP COLUMN IF EXISTS user_id;
ALTER TABLE public.mail_outbox DROP COLUMN IF EXISTS tenant_id;
