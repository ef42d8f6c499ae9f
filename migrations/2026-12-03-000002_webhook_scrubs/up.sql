-- Erasure's second pass over the webhook inbox (`inbox::scrub`): what
-- an erased customer's events left in bodies already processed (or
-- being processed at that instant), taken out in the background, a range
-- of ids at a time. A row is deleted once its range is done, so the ids
-- it names are kept only while it works.
CREATE TABLE public.webhook_scrubs (
    id          BIGSERIAL PRIMARY KEY,
    -- The page, Instagram account or phone number id Meta knows the
    -- contact's channel by, and the customer's ids on it.
    channel     TEXT NOT NULL,
    contact_ids TEXT[] NOT NULL,
    -- Bodies with after_id < id <= up_to are left to read.
    after_id    BIGINT NOT NULL,
    up_to       BIGINT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
