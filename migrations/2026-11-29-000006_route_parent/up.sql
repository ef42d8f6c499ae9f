-- A WhatsApp business account's own webhooks (`account_update`: the app
-- removed, the account banned or restricted) name the account, not a
-- number: routes keep each channel's parent (a number's business account,
-- an Instagram account's page) so such a webhook finds every channel it
-- concerns with one indexed lookup.
ALTER TABLE public.channel_routes ADD COLUMN parent_external_id TEXT;
CREATE INDEX channel_routes_parent_idx ON public.channel_routes (parent_external_id)
    WHERE parent_external_id IS NOT NULL;

-- Existing routes take their channel's parent from the tenant's schema.
DO $$
DECLARE
    t RECORD;
BEGIN
    FOR t IN SELECT id, schema_name FROM public.tenants LOOP
        IF to_regclass(format('%I.channels', t.schema_name)) IS NOT NULL THEN
            EXECUTE format(
                'UPDATE public.channel_routes r SET parent_external_id = c.parent_external_id
                   FROM %I.channels c
                  WHERE r.tenant_id = $1 AND r.channel_id = c.id', t.schema_name)
            USING t.id;
        END IF;
    END LOOP;
END $$;
