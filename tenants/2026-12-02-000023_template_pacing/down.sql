ALTER TABLE messages DROP COLUMN IF EXISTS held_by_meta;
