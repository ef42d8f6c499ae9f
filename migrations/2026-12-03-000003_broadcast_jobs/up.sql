-- The sender also paces broadcasts (`inbox::broadcasts`): a `broadcast`
-- job queues the next few of a broadcast's messages and queues itself
-- again behind them, so the team's replies are not held behind thousands.
ALTER TABLE public.send_queue ADD COLUMN IF NOT EXISTS broadcast_id BIGINT;
ALTER TABLE public.send_queue DROP CONSTRAINT send_queue_kind_check;
ALTER TABLE public.send_queue
    ADD CONSTRAINT send_queue_kind_check CHECK (kind IN ('message', 'mark_seen', 'reaction', 'broadcast')) NOT VALID;
ALTER TABLE public.send_queue VALIDATE CONSTRAINT send_queue_kind_check;
