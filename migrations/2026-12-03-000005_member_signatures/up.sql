-- A member's signature in one tenant (`auth::members`), added to the
-- replies they send on channels that sign them (`inbox::messages`).
ALTER TABLE public.memberships ADD COLUMN IF NOT EXISTS signature TEXT;
