DROP INDEX IF EXISTS messages_text_trgm;
CREATE INDEX messages_text_trgm ON messages USING gin (text public.gin_trgm_ops);
DROP INDEX IF EXISTS contacts_name_trgm;
CREATE INDEX contacts_name_trgm ON contacts USING gin (name public.gin_trgm_ops);
