ALTER TABLE messages DROP COLUMN private;
