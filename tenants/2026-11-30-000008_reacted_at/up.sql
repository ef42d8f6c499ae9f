-- When each contact's reaction shown in `reactions` was made (Meta's time,
-- in milliseconds, by contact): a reaction delivered late does not undo a
-- newer one (`inbox::early`). A constant default: no table rewrite.
ALTER TABLE messages ADD COLUMN reacted_at JSONB NOT NULL DEFAULT '{}';
