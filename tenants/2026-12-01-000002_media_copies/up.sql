-- Copies of Messenger and Instagram media, whose URLs on Meta's CDN expire
-- (`inbox::media_copies`). One row per attachment; gone with its message.
CREATE TABLE media_copies (
    message_id BIGINT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL CHECK (idx >= 0),
    mime TEXT NOT NULL,
    bytes BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, idx)
);
-- Photos and videos come compressed: kept out of line as they are, not
-- compressed again for nothing.
ALTER TABLE media_copies ALTER COLUMN bytes SET STORAGE EXTERNAL;
