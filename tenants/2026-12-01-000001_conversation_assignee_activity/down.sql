DROP INDEX IF EXISTS conversations_assignee_activity_idx;
