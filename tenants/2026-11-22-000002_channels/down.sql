DROP TABLE IF EXISTS pending_selections;
DROP TABLE IF EXISTS channel_members;
DROP TABLE IF EXISTS channels;
