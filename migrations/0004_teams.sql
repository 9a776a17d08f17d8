-- Teams: limits and a budget shared by their keys (a request must pass both the key's and its
-- team's).
CREATE TABLE teams (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    -- rpm, tpm, max_concurrent, budget_usd, budget_period, metadata (JSON).
    spec TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted_at BIGINT
);
CREATE UNIQUE INDEX teams_live_name ON teams (name) WHERE deleted_at IS NULL;
