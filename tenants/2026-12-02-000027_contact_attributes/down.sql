DROP INDEX IF EXISTS contacts_attributes_idx;
ALTER TABLE contacts DROP COLUMN IF EXISTS attributes;
DROP TABLE IF EXISTS contact_attributes;
