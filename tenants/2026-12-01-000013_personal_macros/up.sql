-- A member's own macros beside the team's (`inbox::macros`): NULL owner,
-- the team's. Names are unique among the team's, and among each member's.
ALTER TABLE macros ADD COLUMN IF NOT EXISTS owner_user_id BIGINT;
ALTER TABLE macros DROP CONSTRAINT IF EXISTS macros_name_key;
CREATE UNIQUE INDEX IF NOT EXISTS macros_owner_name ON macros (coalesce(owner_user_id, 0), name);
