-- The audit log is read newest first by id, which its primary key already
-- serves (a btree scans both ways): this index was a second copy of it,
-- written on every audited action and one more relation per tenant schema.
DROP INDEX IF EXISTS audit_log_created_idx;
