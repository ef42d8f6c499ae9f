ALTER TABLE public.memberships DROP COLUMN IF EXISTS keep_customer_messages;
