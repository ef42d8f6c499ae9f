ALTER TABLE public.tenants DROP COLUMN IF EXISTS require_mfa;
