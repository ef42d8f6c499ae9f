DROP INDEX IF EXISTS contacts_external_trgm;
