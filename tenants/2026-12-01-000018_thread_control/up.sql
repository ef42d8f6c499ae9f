-- Which app answers a Messenger or Instagram customer (the handover
-- protocol; `inbox::handover`): NULL while no handover event or standby
-- delivery has said anything, which is the usual case (Switchboard answers).
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS thread_control JSONB;
