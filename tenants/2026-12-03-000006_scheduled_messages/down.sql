DROP TABLE IF EXISTS scheduled_messages;
