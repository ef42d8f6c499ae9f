-- The webhook fields Switchboard last subscribed a page with (a Facebook
-- channel and its Instagram account's). NULL: connected by a release that
-- did not record them; the channel check subscribes such a page again,
-- once, with the fields this release asks for.
ALTER TABLE channels ADD COLUMN subscribed_fields TEXT;
