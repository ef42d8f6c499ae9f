ALTER TABLE conversations DROP COLUMN IF EXISTS thread_control;
