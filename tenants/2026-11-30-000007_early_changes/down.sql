DROP TABLE IF EXISTS early_changes;
