-- A conversation the server could not hand out when it should have (its
-- channel or team hands conversations out, and nobody who may take it was
-- online with room): handed out when someone comes online or has room
-- (`inbox::hand_out`). NULL for every other, a deliberate "no one" included.
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS queued_at TIMESTAMPTZ;
CREATE INDEX IF NOT EXISTS conversations_queued_idx ON conversations (queued_at, id) WHERE queued_at IS NOT NULL;
