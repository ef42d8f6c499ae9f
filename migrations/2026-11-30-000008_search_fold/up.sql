-- Search folds case and accents: "joao" finds "João", "voces" "Vocês".
-- unaccent is a trusted contrib extension, as pg_trgm. The wrapper names
-- its dictionary, so it can be IMMUTABLE and used in index expressions.
CREATE EXTENSION IF NOT EXISTS unaccent WITH SCHEMA public;
CREATE OR REPLACE FUNCTION public.sb_fold(text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    AS $$ SELECT pg_catalog.lower(public.unaccent('public.unaccent'::regdictionary, $1)) $$;
-- A LIKE pattern that finds the folded text anywhere. Escaped after
-- folding: unaccent makes `%`, `_` and `\` of their full-width forms.
CREATE OR REPLACE FUNCTION public.sb_fold_contains(text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    AS $$ SELECT '%' || pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(
                  public.sb_fold($1), '\', '\\'), '%', '\%'), '_', '\_') || '%' $$;
