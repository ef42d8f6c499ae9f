-- Macros (`inbox::macros`): a named list of actions an agent runs on a
-- conversation at once.
CREATE TABLE IF NOT EXISTS macros (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    actions    JSONB NOT NULL,
    created_by BIGINT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
