DROP TABLE IF EXISTS media_copies;
