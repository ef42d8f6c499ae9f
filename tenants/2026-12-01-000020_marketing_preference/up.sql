-- A WhatsApp customer's choice about marketing messages (Meta's
-- `user_preferences` webhook; `inbox::contacts`): when they stopped them
-- (NULL: they receive them), and Meta's time of their last choice, so a
-- retry delivered late does not undo a newer one.
ALTER TABLE contacts ADD COLUMN IF NOT EXISTS marketing_stopped_at TIMESTAMPTZ;
ALTER TABLE contacts ADD COLUMN IF NOT EXISTS marketing_chosen_at TIMESTAMPTZ;
