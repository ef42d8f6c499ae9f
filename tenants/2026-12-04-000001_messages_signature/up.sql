-- The sign-off a reply went with (`inbox::messages`, signed replies), as
-- it was appended to `text`; NULL when it went unsigned. A retry under
-- the reply's `client_id` compares what was written, not what the
-- signature made of it, so one that crosses a change of signature is
-- still the same request. Old rows have NULL and compare as before.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS signature TEXT;
