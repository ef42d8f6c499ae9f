DROP TABLE IF EXISTS missed_targets;
