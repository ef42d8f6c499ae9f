-- When a webhook last came for the channel (to the minute): Meta switches a
-- page's webhooks off after an hour of failed deliveries, and a channel that
-- has gone quiet is the sign an admin can see.
ALTER TABLE channels ADD COLUMN IF NOT EXISTS last_webhook_at timestamptz;
