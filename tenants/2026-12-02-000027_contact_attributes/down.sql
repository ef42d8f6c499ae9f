ALTER TABLE contacts DROP COLUMN IF EXISTS attributes;
DROP TABLE IF EXISTS contact_attributes;
