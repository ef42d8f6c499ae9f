-- How urgent the team judged a conversation (`PATCH /api/conversations/{id}`
-- `{"priority": "urgent"}`): low, medium, high or urgent, NULL for none.
-- Checked by the server, not by a constraint: adding one would read every
-- conversation under an exclusive lock. Nullable, no default: no rewrite.
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS priority TEXT;
