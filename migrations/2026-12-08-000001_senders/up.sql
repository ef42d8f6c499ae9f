-- The instances whose sender runs (`inbox::roster`): each checks in every
-- few seconds, and each sends to a channel at its rate divided by how many
-- checked in lately, so together they keep to the channel's rate.
CREATE TABLE IF NOT EXISTS public.senders (
    id uuid PRIMARY KEY,
    seen_at timestamptz NOT NULL DEFAULT now()
);
