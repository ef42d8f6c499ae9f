-- A wait answered (or resolved) after its reply target passed is a target
-- missed, even when the answer came before the overdue clock rang it
-- (`inbox::waiting::ring_overdue` looks every 30 seconds). A trigger, so
-- that every way a wait ends (a reply, an echo, a resolve, a block) keeps
-- it, not only those that remember to. The WHEN clause keeps the cost off
-- the many updates that end no late wait. The schema is the trigger's own
-- table's (a spare schema is renamed into a tenant's, so no name is
-- written down here).
CREATE OR REPLACE FUNCTION keep_late_answer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format(
        'INSERT INTO %I.missed_targets (conversation_id, channel_id, assignee_id, priority, waiting_since, due_at) '
        'VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (conversation_id, waiting_since) DO NOTHING',
        TG_TABLE_SCHEMA)
    USING OLD.id, OLD.channel_id, OLD.assignee_id, OLD.priority, OLD.waiting_since, OLD.reply_due_at;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS late_answer ON conversations;
-- Ended: cleared, or moved later (a new wait after the answer). Not
-- rung: the clock kept those already.
CREATE TRIGGER late_answer AFTER UPDATE OF waiting_since ON conversations
    FOR EACH ROW
    WHEN (OLD.waiting_since IS NOT NULL
          AND OLD.reply_due_at <= now()
          AND OLD.status IN ('open', 'pending', 'snoozed')
          AND (NEW.waiting_since IS NULL OR NEW.waiting_since > OLD.waiting_since)
          AND OLD.overdue_rung_for IS DISTINCT FROM OLD.waiting_since)
    EXECUTE FUNCTION keep_late_answer();
