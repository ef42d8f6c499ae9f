-- "ids are strings" (API.md): a channel's member list was audited with its
-- user ids as JSON numbers; every other entry names ids as strings. The old
-- entries are rewritten so the log reads alike whatever its age.
UPDATE audit_log
   SET details = jsonb_set(
           details,
           '{user_ids}',
           (SELECT coalesce(jsonb_agg(to_jsonb(e #>> '{}') ORDER BY n), '[]'::jsonb)
              FROM jsonb_array_elements(details -> 'user_ids') WITH ORDINALITY AS x(e, n)))
 WHERE action = 'channel.members_set'
   AND jsonb_typeof(details -> 'user_ids') = 'array'
   AND EXISTS (SELECT 1 FROM jsonb_array_elements(details -> 'user_ids') e WHERE jsonb_typeof(e) = 'number');
