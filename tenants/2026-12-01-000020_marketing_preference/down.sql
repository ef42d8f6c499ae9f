ALTER TABLE contacts DROP COLUMN IF EXISTS marketing_chosen_at;
ALTER TABLE contacts DROP COLUMN IF EXISTS marketing_stopped_at;
