CREATE TABLE channels (
    id                BIGSERIAL PRIMARY KEY,
    platform          TEXT NOT NULL CHECK (platform IN ('facebook', 'instagram', 'whatsapp')),
    external_id       TEXT NOT NULL,
    name              TEXT NOT NULL,
    status            TEXT NOT NULL DEFAULT 'connected'
                      CHECK (status IN ('connected', 'reauth_required', 'disconnected')),
    settings          JSONB NOT NULL DEFAULT '{"auto_reply": {"enabled": false, "text": ""}, "notifications": true}'::jsonb,
    -- "<key id>:<base64(nonce || AES-256-GCM ciphertext)>", bound to this
    -- channel's (platform, external id); NULL once disconnected.
    access_token_enc  TEXT,
    -- The page of an Instagram account, the business account of a number.
    parent_external_id TEXT,
    -- App-scoped id of the Meta user who connected it (data deletion).
    meta_user_id      TEXT,
    status_reason     TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (platform, external_id)
);

CREATE TABLE channel_members (
    channel_id BIGINT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    user_id    BIGINT NOT NULL,
    PRIMARY KEY (channel_id, user_id)
);
CREATE INDEX channel_members_user_idx ON channel_members (user_id);

-- Pages found by an OAuth round trip, waiting for the admin's choice.
CREATE TABLE pending_selections (
    id             TEXT PRIMARY KEY,
    created_by     BIGINT NOT NULL,
    meta_user_id   TEXT NOT NULL,
    user_token_enc TEXT NOT NULL,
    pages          JSONB NOT NULL,
    expires_at     TIMESTAMPTZ NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
