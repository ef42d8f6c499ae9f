ALTER TABLE public.invitations DROP COLUMN IF EXISTS mailed;
DROP INDEX IF EXISTS public.mail_outbox_notice_idx;
ALTER TABLE public.mail_outbox DROP COLUMN IF EXISTS kind;
ALTER TABLE public.memberships DROP COLUMN IF EXISTS mail_assigned, DROP COLUMN IF EXISTS mail_mentioned, DROP COLUMN IF EXISTS mail_overdue;
