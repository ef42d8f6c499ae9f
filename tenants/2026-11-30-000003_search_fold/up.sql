-- The search indexes hold folded text (public.sb_fold: lower case, no
-- accents), as the search compares it. Same names: the background merge
-- (inbox::search_index) cleans them by name.
DROP INDEX IF EXISTS messages_text_trgm;
CREATE INDEX messages_text_trgm ON messages USING gin (public.sb_fold(text) public.gin_trgm_ops);
DROP INDEX IF EXISTS contacts_name_trgm;
CREATE INDEX contacts_name_trgm ON contacts USING gin (public.sb_fold(name) public.gin_trgm_ops);
