-- A customer writing in a conversation assigned to someone is kept for
-- that member too (`inbox::notifications`, kind `customer_message`): one
-- unread notification per member and conversation until it is read. The
-- unique index is what the webhook processor's insert meets when the
-- customer writes again (and then writes nothing).
ALTER TABLE notifications DROP CONSTRAINT IF EXISTS notifications_kind_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_kind_check
    CHECK (kind IN ('assigned', 'mention', 'reply_overdue', 'customer_message'));
CREATE UNIQUE INDEX IF NOT EXISTS notifications_one_unread_customer_message
    ON notifications (user_id, conversation_id)
    WHERE kind = 'customer_message' AND read_at IS NULL;
