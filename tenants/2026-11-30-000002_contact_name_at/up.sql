-- When Meta last gave the contact's name (the webhook's own time): a
-- WhatsApp customer who renames themselves shows the new name, and a
-- webhook delivered late does not bring the old one back.
ALTER TABLE contacts ADD COLUMN IF NOT EXISTS name_at timestamptz;
