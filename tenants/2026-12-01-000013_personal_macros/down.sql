DROP INDEX IF EXISTS macros_owner_name;
DELETE FROM macros WHERE owner_user_id IS NOT NULL;
ALTER TABLE macros DROP COLUMN IF EXISTS owner_user_id;
ALTER TABLE macros ADD CONSTRAINT macros_name_key UNIQUE (name);
