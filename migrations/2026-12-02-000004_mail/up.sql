-- Mail the server sends (`mail`): invitations and password resets. A row
-- is kept until sent (or given up), then its body, which holds a link
-- worth an account, is emptied; housekeeping deletes it a week later.
CREATE TABLE IF NOT EXISTS public.mail_outbox (
    id              BIGSERIAL PRIMARY KEY,
    recipient       TEXT NOT NULL,
    subject         TEXT NOT NULL,
    body            TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts        INT NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at         TIMESTAMPTZ,
    failed_at       TIMESTAMPTZ,
    last_error      TEXT
);
CREATE INDEX IF NOT EXISTS mail_outbox_due_idx
    ON public.mail_outbox (next_attempt_at) WHERE sent_at IS NULL AND failed_at IS NULL;
CREATE INDEX IF NOT EXISTS mail_outbox_created_idx ON public.mail_outbox (created_at);

-- Password resets a person asked for by mail (`auth::password_reset`):
-- only a SHA-256 of the link's token is kept; one live reset per person.
CREATE TABLE IF NOT EXISTS public.password_resets (
    id         BIGSERIAL PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES public.users (id) ON DELETE CASCADE,
    token_hash BYTEA NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS password_resets_user_idx ON public.password_resets (user_id, created_at);
CREATE INDEX IF NOT EXISTS password_resets_expiry_idx ON public.password_resets (expires_at);
