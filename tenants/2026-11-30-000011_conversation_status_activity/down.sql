DROP INDEX IF EXISTS conversations_status_activity_idx;
