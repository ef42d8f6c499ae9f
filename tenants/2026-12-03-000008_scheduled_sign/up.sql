-- Whether a scheduled message ends with its author's signature
-- (`inbox::messages`); NULL: as its channel's `sign_replies` says when it
-- goes.
ALTER TABLE scheduled_messages ADD COLUMN IF NOT EXISTS sign BOOLEAN;
