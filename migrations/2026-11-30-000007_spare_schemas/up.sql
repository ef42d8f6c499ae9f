-- Tenant schemas made ahead of time (tenancy::spares). Creating a schema's
-- relations costs tens of milliseconds on a slow disk; renaming a ready one
-- costs a catalog update, so sign-up takes one when there is one.
CREATE TABLE public.spare_schemas (
    schema_name TEXT PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
