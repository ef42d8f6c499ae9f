-- What each member was told while they may have been away
-- (`inbox::notifications`): a colleague assigned them a conversation or
-- mentioned them in a note, or a conversation of theirs passed its reply
-- target. Kept with the conversation (and the note) it is about; read
-- when the member has seen it.
CREATE TABLE notifications (
    id              BIGSERIAL PRIMARY KEY,
    user_id         BIGINT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('assigned', 'mention', 'reply_overdue')),
    conversation_id BIGINT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    message_id      BIGINT REFERENCES messages (id) ON DELETE CASCADE,
    by_user_id      BIGINT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    read_at         TIMESTAMPTZ
);
CREATE INDEX notifications_member_idx ON notifications (user_id, id DESC);
CREATE INDEX notifications_unread_idx ON notifications (user_id) WHERE read_at IS NULL;
CREATE INDEX notifications_conversation_idx ON notifications (conversation_id);
CREATE INDEX notifications_message_idx ON notifications (message_id) WHERE message_id IS NOT NULL;
