-- Teams (`inbox::teams`): named groups of members ("Billing", "Night
-- shift") that conversations are handed to, beside or instead of one
-- person. Members are public users: no foreign key to `public` (the Citus
-- path); a member who leaves the tenant leaves its teams.
CREATE TABLE IF NOT EXISTS teams (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS teams_name_idx ON teams (lower(name));
CREATE TABLE IF NOT EXISTS team_members (
    team_id BIGINT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX IF NOT EXISTS team_members_user_idx ON team_members (user_id);
-- Deleting a team first takes it off its conversations, announcing each;
-- SET NULL is the backstop.
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS team_id BIGINT REFERENCES teams (id) ON DELETE SET NULL;
CREATE INDEX IF NOT EXISTS conversations_team_idx
    ON conversations (team_id, last_activity_at DESC, id DESC) WHERE team_id IS NOT NULL;
