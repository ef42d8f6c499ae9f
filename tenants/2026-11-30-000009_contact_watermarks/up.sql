-- The newest Messenger delivery and read watermarks of the conversation's
-- contact: a reply stored after its watermark came (an echo delivered late)
-- takes the receipt it covers (`inbox::early`).
ALTER TABLE conversations ADD COLUMN contact_delivered_at TIMESTAMPTZ, ADD COLUMN contact_read_at TIMESTAMPTZ;
