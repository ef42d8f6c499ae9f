-- A reply waits for the replies written before it in its conversation
-- that are still to go (`inbox::sender`): the claim and the idle worker's
-- look for the next due row ask for them by conversation.
CREATE INDEX IF NOT EXISTS send_queue_pending_replies_idx
    ON public.send_queue (tenant_id, conversation_id, id)
    WHERE status = 'pending' AND kind = 'message';
