-- What Meta said of a template message it took but holds (template
-- pacing: `held_for_quality_assessment`, or `paused`), from the send's
-- answer (`inbox::sender`); cleared by the message's next status from
-- Meta, which says it went out or failed.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS held_by_meta TEXT;
