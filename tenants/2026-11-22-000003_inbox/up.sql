CREATE TABLE contacts (
    id                 BIGSERIAL PRIMARY KEY,
    channel_id         BIGINT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    external_id        TEXT NOT NULL,
    name               TEXT,
    profile_pic_url    TEXT,
    profile_checked_at TIMESTAMPTZ,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (channel_id, external_id)
);
CREATE INDEX contacts_name_trgm ON contacts USING gin (name public.gin_trgm_ops);

-- One conversation per contact and channel; resolving closes it, the
-- contact's next message reopens it.
CREATE TABLE conversations (
    id                   BIGSERIAL PRIMARY KEY,
    channel_id           BIGINT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    contact_id           BIGINT NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    status               TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'pending', 'snoozed', 'resolved')),
    assignee_id          BIGINT,
    snoozed_until        TIMESTAMPTZ,
    unread_count         INT NOT NULL DEFAULT 0,
    last_message_id      BIGINT,
    last_activity_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_inbound_at      TIMESTAMPTZ,
    last_inbound_external_id TEXT,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (channel_id, contact_id)
);
CREATE INDEX conversations_activity_idx ON conversations (last_activity_at DESC, id DESC);
CREATE INDEX conversations_snoozed_idx ON conversations (snoozed_until) WHERE status = 'snoozed';

CREATE TABLE messages (
    id                  BIGSERIAL PRIMARY KEY,
    conversation_id     BIGINT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    channel_id          BIGINT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    direction           TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    sender_kind         TEXT NOT NULL CHECK (sender_kind IN ('contact', 'agent', 'page')),
    sender_user_id      BIGINT,
    text                TEXT,
    attachments         JSONB NOT NULL DEFAULT '[]'::jsonb,
    status              TEXT NOT NULL CHECK (status IN ('received', 'pending', 'sent', 'delivered', 'read', 'failed')),
    error               JSONB,
    external_id         TEXT,
    client_id           TEXT,
    reply_to_external_id TEXT,
    quick_reply_payload TEXT,
    postback_payload    TEXT,
    reactions           JSONB NOT NULL DEFAULT '{}'::jsonb,
    edited_at           TIMESTAMPTZ,
    deleted_at          TIMESTAMPTZ,
    platform_timestamp  TIMESTAMPTZ,
    -- Ordering key: the platform's time when known (webhooks arrive out of
    -- order), else when we stored it.
    sort_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- NULLs are distinct: messages without an id yet (pending) never collide.
ALTER TABLE messages ADD CONSTRAINT messages_external_key UNIQUE (channel_id, external_id);
ALTER TABLE messages ADD CONSTRAINT messages_client_key UNIQUE (conversation_id, client_id);
CREATE INDEX messages_conversation_idx ON messages (conversation_id, sort_at, id);
CREATE INDEX messages_text_trgm ON messages USING gin (text public.gin_trgm_ops);

-- Receipts for messages whose Meta id we have not stored yet (a status
-- webhook can beat the send's answer); applied when the id arrives.
CREATE TABLE early_statuses (
    channel_id  BIGINT NOT NULL,
    external_id TEXT NOT NULL,
    status      TEXT NOT NULL,
    error       JSONB,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (channel_id, external_id, status)
);

-- The realtime log. `seq` comes from event_seq, whose single row every
-- appending transaction locks until it commits: sequence numbers become
-- visible in order, so a reader never skips one.
CREATE TABLE events (
    seq             BIGINT PRIMARY KEY,
    type            TEXT NOT NULL,
    channel_id      BIGINT,
    conversation_id BIGINT,
    payload         JSONB NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE event_seq (
    id    INT PRIMARY KEY CHECK (id = 1),
    value BIGINT NOT NULL
);
INSERT INTO event_seq (id, value) VALUES (1, 0);

CREATE TABLE canned_responses (
    id         BIGSERIAL PRIMARY KEY,
    shortcut   TEXT NOT NULL UNIQUE,
    text       TEXT NOT NULL,
    created_by BIGINT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
