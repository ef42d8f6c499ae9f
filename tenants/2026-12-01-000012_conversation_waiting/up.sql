-- When the customer's oldest message the team has not answered came
-- (`inbox::waiting`): set by their message, cleared by the team's answer
-- or by resolving. Nullable, no default: no rewrite.
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS waiting_since TIMESTAMPTZ;
-- The wait (its `waiting_since`) the team was last told had passed its
-- reply target: each wait rings once.
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS overdue_rung_for TIMESTAMPTZ;

-- The conversations already waiting: their customer's first message after
-- the team's last answer (the same rule as `waiting::recompute`). Only
-- unresolved conversations are read, each through its messages' index.
UPDATE conversations c
   SET waiting_since = w.at
  FROM (SELECT c2.id,
               (SELECT min(i.sort_at) FROM messages i
                 WHERE i.conversation_id = c2.id AND i.direction = 'in' AND NOT i.private
                   AND i.deleted_at IS NULL
                   AND i.sort_at > coalesce(
                         (SELECT max(o.sort_at) FROM messages o
                           WHERE o.conversation_id = c2.id AND o.direction = 'out' AND NOT o.private
                             AND o.status <> 'failed'
                             AND (o.sender_kind = 'agent' OR (o.sender_kind = 'page' AND o.client_id IS NULL))),
                         '-infinity'::timestamptz)) AS at
          FROM conversations c2
         WHERE c2.status <> 'resolved' AND c2.last_inbound_at IS NOT NULL) w
 WHERE c.id = w.id AND w.at IS NOT NULL;

-- No index of its own: every webhook updates its conversation, and one
-- more index to keep cost each of them (`bench realtime`, twenty-fifth
-- machine). A resolved conversation waits for nobody, so the queries of
-- waiting ones also name the unresolved statuses and read the status
-- index, which holds few of a long history's conversations.
