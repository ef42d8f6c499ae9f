ALTER TABLE public.send_queue DROP COLUMN IF EXISTS may_have_gone;
