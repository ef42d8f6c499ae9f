-- Two-step sign-in (`auth::mfa`): a person's authenticator secret,
-- sealed with the encryption keys; on once confirmed (`totp_enabled_at`);
-- the 30-second step of the last code taken, so a code is taken once.
ALTER TABLE public.users
    ADD COLUMN IF NOT EXISTS totp_secret_enc TEXT,
    ADD COLUMN IF NOT EXISTS totp_enabled_at TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS totp_last_step BIGINT;

-- Single-use recovery codes (for a lost phone), kept as SHA-256 of the
-- code: they are random, 50 bits and more, so a slow hash adds nothing.
CREATE TABLE IF NOT EXISTS public.recovery_codes (
    id         BIGSERIAL PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES public.users (id) ON DELETE CASCADE,
    code_hash  TEXT NOT NULL,
    used_at    TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (user_id, code_hash)
);
