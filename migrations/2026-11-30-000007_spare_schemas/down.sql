-- The spares are schemas of their own: drop them with the list.
DO $$
DECLARE
    s RECORD;
BEGIN
    FOR s IN SELECT schema_name FROM public.spare_schemas LOOP
        EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', s.schema_name);
    END LOOP;
END $$;
DROP TABLE public.spare_schemas;
