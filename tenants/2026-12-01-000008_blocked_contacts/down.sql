DROP INDEX IF EXISTS contacts_blocked;
ALTER TABLE contacts DROP COLUMN IF EXISTS blocked_at, DROP COLUMN IF EXISTS blocked_by;
