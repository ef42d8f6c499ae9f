DROP TABLE IF EXISTS public.invitations;
