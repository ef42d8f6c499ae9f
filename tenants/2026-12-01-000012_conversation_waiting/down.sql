ALTER TABLE conversations DROP COLUMN IF EXISTS overdue_rung_for;
ALTER TABLE conversations DROP COLUMN IF EXISTS waiting_since;
