-- A tenant that requires two-step sign-in of its members (`auth::mfa`).
ALTER TABLE public.tenants ADD COLUMN IF NOT EXISTS require_mfa BOOLEAN NOT NULL DEFAULT false;
