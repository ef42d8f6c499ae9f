ALTER TABLE channels DROP COLUMN IF EXISTS whatsapp_number;
