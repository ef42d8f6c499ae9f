ALTER TABLE public.memberships DROP COLUMN IF EXISTS signature;
