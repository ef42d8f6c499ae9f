-- Mail about the inbox (`inbox::notice_mail`): whether a member is mailed,
-- in this tenant, when a colleague assigns them a conversation, mentions
-- them in a note, or one of theirs passes its reply target, while they are
-- not online; and which mail is
-- such a notice, counted against a member's hourly limit.
ALTER TABLE public.memberships
    ADD COLUMN IF NOT EXISTS mail_assigned BOOLEAN NOT NULL DEFAULT true,
    ADD COLUMN IF NOT EXISTS mail_mentioned BOOLEAN NOT NULL DEFAULT true,
    ADD COLUMN IF NOT EXISTS mail_overdue BOOLEAN NOT NULL DEFAULT true;
ALTER TABLE public.mail_outbox ADD COLUMN IF NOT EXISTS kind TEXT NOT NULL DEFAULT 'account';
CREATE INDEX IF NOT EXISTS mail_outbox_notice_idx ON public.mail_outbox (recipient, created_at) WHERE kind = 'notice';

-- Whether an invitation's link was mailed (mail on), for the admins'
-- listing: one that was not is theirs to hand over.
ALTER TABLE public.invitations ADD COLUMN IF NOT EXISTS mailed BOOLEAN NOT NULL DEFAULT false;
