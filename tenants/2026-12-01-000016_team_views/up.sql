-- The team's saved views beside each member's own (`inbox::saved_views`):
-- no owner, the team's. Names are unique among the team's, and among each
-- member's own.
ALTER TABLE saved_views ALTER COLUMN user_id DROP NOT NULL;
ALTER TABLE saved_views DROP CONSTRAINT IF EXISTS saved_views_user_id_name_key;
CREATE UNIQUE INDEX IF NOT EXISTS saved_views_owner_name ON saved_views (coalesce(user_id, 0), name);
