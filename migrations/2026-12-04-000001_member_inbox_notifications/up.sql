-- A member's choice, in one tenant, of what their notifications keep
-- (`inbox::notifications`): whether a customer writing in a conversation
-- assigned to them is kept (`customer_message`; on until changed). The
-- other kinds are what a colleague or the clock did for them, and stay.
ALTER TABLE public.memberships ADD COLUMN IF NOT EXISTS keep_customer_messages BOOLEAN NOT NULL DEFAULT true;
