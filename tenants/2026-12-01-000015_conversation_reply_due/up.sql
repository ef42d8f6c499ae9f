-- When the wait's reply target runs out (`inbox::waiting`), kept on the
-- conversation since targets may count only business hours, which SQL
-- cannot work out. Nullable, no default: no rewrite; no index (see
-- `…000012_conversation_waiting`: the overdue ones are read through the
-- status index).
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS reply_due_at TIMESTAMPTZ;

-- Conversations waiting now, by the targets stored so far (all of them
-- minutes of the clock). A value the API would not have stored (only by
-- hand) is no target.
UPDATE conversations c
   SET reply_due_at = c.waiting_since
                      + make_interval(mins => (ch.settings->'reply_targets'->>coalesce(c.priority, 'none'))::int)
  FROM channels ch
 WHERE ch.id = c.channel_id
   AND c.status IN ('open', 'pending', 'snoozed') AND c.waiting_since IS NOT NULL
   AND jsonb_typeof(ch.settings->'reply_targets'->coalesce(c.priority, 'none')) = 'number'
   AND (ch.settings->'reply_targets'->>coalesce(c.priority, 'none')) ~ '^[0-9]{1,5}$';
