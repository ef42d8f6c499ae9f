-- Claims walk only rows that are due. Rows leased by a worker have their
-- next_attempt_at a minute ahead, so they sort after now() and are never
-- visited: the claim's cost no longer grows with the work others hold.
CREATE INDEX webhook_events_due_idx ON public.webhook_events (next_attempt_at, id) WHERE status = 'pending';
DROP INDEX public.webhook_events_pending_idx;
