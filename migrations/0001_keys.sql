-- Virtual API keys issued through the admin API (keys from the TOML file are not stored).
-- Portable between SQLite and PostgreSQL: text ids, BIGINT unix milliseconds, JSON as text.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    -- sha256:<64 hex> of the key; the key itself is never stored.
    hash TEXT NOT NULL,
    -- The key's first characters, to recognise it in a list (`igw-1a2b3c4d`).
    key_prefix TEXT NOT NULL,
    owner TEXT,
    team TEXT,
    -- models, rpm, tpm, max_concurrent, budget_usd, budget_period, tools, metadata (JSON).
    spec TEXT NOT NULL,
    expires_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    revoked_at BIGINT
);
-- A name names one live key (a revoked key's name can be used again).
CREATE UNIQUE INDEX api_keys_live_name ON api_keys (name) WHERE revoked_at IS NULL;
CREATE UNIQUE INDEX api_keys_hash ON api_keys (hash);

-- One row: bumped by every change, polled by every replica (changes reach them within a second).
CREATE TABLE changes (
    id INTEGER PRIMARY KEY,
    seq BIGINT NOT NULL
);
INSERT INTO changes (id, seq) VALUES (1, 0);
