DROP TABLE IF EXISTS note_mentions;
