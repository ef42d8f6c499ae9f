-- A member removed stayed on the channels' lists they were on (`member_ids`
-- named them; sending such a list back was refused as naming a stranger,
-- and someone added again found their old channels). Removal now takes
-- them off; the lists already kept lose whoever is no longer a member of
-- this schema's tenant. The search path holds only the tenant schema.
DELETE FROM channel_members cm
 WHERE NOT EXISTS (
       SELECT 1
         FROM public.memberships m
         JOIN public.tenants t ON t.id = m.tenant_id
        WHERE m.user_id = cm.user_id
          AND t.schema_name = pg_catalog.current_schema());
