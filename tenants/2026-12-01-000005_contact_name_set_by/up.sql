-- Who of the team named the contact (`PATCH /api/contacts/{id}`): that
-- name stays until the team takes it back, whatever Meta's profile or
-- webhooks say. A catalogue-only change (no rewrite, no scan).
ALTER TABLE contacts ADD COLUMN IF NOT EXISTS name_set_by BIGINT;
