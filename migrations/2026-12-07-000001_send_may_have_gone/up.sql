-- A send whose request went out and got no answer (a timeout, a lost
-- connection) may have reached the customer. Kept on the job, whatever
-- its later tries say, so that each of them first looks for a sign that
-- Meta sent it (`inbox::sender`) rather than sending a second copy.
ALTER TABLE public.send_queue ADD COLUMN IF NOT EXISTS may_have_gone BOOLEAN NOT NULL DEFAULT false;
