-- A team that hands its conversations out itself (`inbox::teams`): one
-- handed to it with no one on it goes to the least busy of its members
-- online.
ALTER TABLE teams ADD COLUMN IF NOT EXISTS auto_assign BOOLEAN NOT NULL DEFAULT false;
