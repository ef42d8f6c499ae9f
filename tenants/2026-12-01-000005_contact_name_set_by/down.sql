ALTER TABLE contacts DROP COLUMN IF EXISTS name_set_by;
