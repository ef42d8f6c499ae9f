-- A channel's sends held while Meta rate-limits it
-- (`channels::send_hold`): `{code, since, until}`, cleared by the first
-- send that goes through after it.
ALTER TABLE channels ADD COLUMN IF NOT EXISTS send_hold JSONB;
