DROP TABLE IF EXISTS public.replaced_invitations;
