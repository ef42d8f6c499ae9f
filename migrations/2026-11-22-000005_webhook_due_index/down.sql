CREATE INDEX webhook_events_pending_idx ON public.webhook_events (id) WHERE status = 'pending';
DROP INDEX public.webhook_events_due_idx;
