DROP INDEX IF EXISTS contacts_whatsapp_input;
ALTER TABLE contacts DROP COLUMN IF EXISTS whatsapp_input;
