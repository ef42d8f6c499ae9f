-- A notice mail's one-click unsubscribe address (RFC 8058), sent as its
-- List-Unsubscribe header (`inbox::notice_mail`); emptied with the body
-- once the mail is sent or given up.
ALTER TABLE public.mail_outbox ADD COLUMN IF NOT EXISTS list_unsubscribe TEXT;
