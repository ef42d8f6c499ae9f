DROP INDEX IF EXISTS notifications_one_unread_customer_message;
DELETE FROM notifications WHERE kind = 'customer_message';
ALTER TABLE notifications DROP CONSTRAINT IF EXISTS notifications_kind_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_kind_check
    CHECK (kind IN ('assigned', 'mention', 'reply_overdue'));
