UPDATE broadcasts SET status = 'cancelled', finished_at = now() WHERE status = 'scheduled';
ALTER TABLE broadcasts DROP CONSTRAINT IF EXISTS broadcasts_status_check;
ALTER TABLE broadcasts
    ADD CONSTRAINT broadcasts_status_check CHECK (status IN ('sending', 'done', 'cancelled', 'failed'));
ALTER TABLE broadcasts DROP COLUMN IF EXISTS send_at;
