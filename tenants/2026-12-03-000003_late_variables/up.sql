-- An automatic reply that names a customer whose name Meta has not told
-- yet (a Messenger or Instagram customer's first message): its text with
-- the variables still in, filled in again by the sender just before it
-- goes, once the customer's profile is looked up (`inbox::variables`).
-- Cleared when it is filled in; empty for every other message.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS unrendered text;
