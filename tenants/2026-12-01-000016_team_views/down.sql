DELETE FROM saved_views WHERE user_id IS NULL;
DROP INDEX IF EXISTS saved_views_owner_name;
ALTER TABLE saved_views ADD CONSTRAINT saved_views_user_id_name_key UNIQUE (user_id, name);
ALTER TABLE saved_views ALTER COLUMN user_id SET NOT NULL;
