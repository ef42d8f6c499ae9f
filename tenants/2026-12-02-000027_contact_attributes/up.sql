-- Attributes a team keeps for its customers beyond Meta's profile (a
-- plan, an order number, a renewal date; `inbox::attributes`): their
-- definitions, and each contact's values by key.
CREATE TABLE IF NOT EXISTS contact_attributes (
    key TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('text', 'number', 'boolean', 'date', 'list')),
    options TEXT[] NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- A constant default: no rewrite of the table, whatever its size.
ALTER TABLE contacts ADD COLUMN IF NOT EXISTS attributes JSONB NOT NULL DEFAULT '{}';
-- `GET /api/contacts?attribute=key` and `key:value`: the contacts that have
-- it, or hold that value, without reading every contact.
CREATE INDEX IF NOT EXISTS contacts_attributes_idx ON contacts USING gin (attributes);
