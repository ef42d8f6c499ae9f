ALTER TABLE messages DROP COLUMN IF EXISTS search_text;
CREATE INDEX IF NOT EXISTS messages_text_trgm ON messages USING gin (public.sb_fold(text) public.gin_trgm_ops);
ALTER TABLE contacts DROP COLUMN IF EXISTS search_name;
CREATE INDEX IF NOT EXISTS contacts_name_trgm ON contacts USING gin (public.sb_fold(name) public.gin_trgm_ops);
