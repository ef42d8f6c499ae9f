-- The one member an event is meant for (a mention of them, their unread
-- count), when it is not every agent's of its channel: only that member's
-- sockets receive it, live or replayed (`inbox::events`). No foreign key:
-- members live in the public schema. Old rows are everyone's (NULL).
ALTER TABLE events ADD COLUMN IF NOT EXISTS for_user_id BIGINT;
