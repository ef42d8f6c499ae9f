-- A notice mail names the tenant and member it tells about, and the
-- conversations whose customers it quotes, so that one not yet sent (an
-- SMTP server down) goes no further once the member leaves the tenant,
-- the tenant is dropped, or those conversations are erased
-- (`mail::withdraw`). Account mail (invitations, resets) names none.
ALTER TABLE public.mail_outbox ADD COLUMN IF NOT EXISTS tenant_id BIGINT;
ALTER TABLE public.mail_outbox ADD COLUMN IF NOT EXISTS user_id BIGINT;
ALTER TABLE public.mail_outbox ADD COLUMN IF NOT EXISTS conversation_ids BIGINT[];
CREATE INDEX IF NOT EXISTS mail_outbox_unsent_about_idx ON public.mail_outbox (tenant_id, user_id)
    WHERE sent_at IS NULL AND failed_at IS NULL AND tenant_id IS NOT NULL;
