CREATE INDEX IF NOT EXISTS audit_log_created_idx ON audit_log (id DESC);
