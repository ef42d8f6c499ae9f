-- The digits an agent wrote first to (`inbox::outreach`), kept when Meta
-- answered the send with another WhatsApp id for the customer, which the
-- contact then takes (`inbox::contacts::known_to_whatsapp_as`): the next
-- time someone types that number, it finds the same contact.
ALTER TABLE contacts ADD COLUMN IF NOT EXISTS whatsapp_input TEXT;
CREATE INDEX IF NOT EXISTS contacts_whatsapp_input ON contacts (channel_id, whatsapp_input)
    WHERE whatsapp_input IS NOT NULL;
