DROP TABLE IF EXISTS saved_views;
