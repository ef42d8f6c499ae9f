-- When the customer's oldest message the team has not answered came
-- (`inbox::waiting`): set by their message, cleared by the team's answer
-- or by resolving. Nullable, no default: no rewrite.
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS waiting_since TIMESTAMPTZ;

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

-- The longest waits first (`?sort=waiting`), and only the waiting ones.
CREATE INDEX IF NOT EXISTS conversations_waiting_idx
    ON conversations (waiting_since, id) WHERE waiting_since IS NOT NULL;
