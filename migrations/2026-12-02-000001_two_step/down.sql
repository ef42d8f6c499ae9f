DROP TABLE IF EXISTS public.recovery_codes;
ALTER TABLE public.users
    DROP COLUMN IF EXISTS totp_secret_enc,
    DROP COLUMN IF EXISTS totp_enabled_at,
    DROP COLUMN IF EXISTS totp_last_step;
