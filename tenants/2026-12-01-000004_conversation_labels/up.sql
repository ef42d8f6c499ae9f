-- Labels a team puts on conversations ("vip", "refund", "wholesale") to
-- sort and find them (`inbox::conversations::normalize_labels`). A constant
-- default: no row is rewritten. No index: a label narrows a page walked
-- newest first, and an index on a column of the table every webhook
-- updates would cost every webhook.
ALTER TABLE conversations ADD COLUMN labels TEXT[] NOT NULL DEFAULT '{}';
