-- "Mine" (`assignee=me`, or any member's id) over every status, newest
-- activity first. Neither the activity index nor the status one narrows
-- by assignee: an agent with a few conversations in a tenant of 200,000
-- had all of them read to find theirs (11-14 ms, a parallel scan taking
-- both cores; with this index well under 1 ms). Unassigned conversations,
-- most of them, are left out: `assignee=none` is served by the others.
CREATE INDEX conversations_assignee_activity_idx ON conversations (assignee_id, last_activity_at DESC, id DESC)
    WHERE assignee_id IS NOT NULL;
