-- A broadcast may be scheduled (`inbox::broadcasts`): it waits as
-- `scheduled` until `send_at`, its first job due then.
ALTER TABLE broadcasts ADD COLUMN IF NOT EXISTS send_at TIMESTAMPTZ;
ALTER TABLE broadcasts DROP CONSTRAINT IF EXISTS broadcasts_status_check;
ALTER TABLE broadcasts
    ADD CONSTRAINT broadcasts_status_check
    CHECK (status IN ('scheduled', 'sending', 'done', 'cancelled', 'failed')) NOT VALID;
ALTER TABLE broadcasts VALIDATE CONSTRAINT broadcasts_status_check;
