-- Providers, models (aliases) and their backends added through the admin API: one table of
-- JSON documents, read whole into every replica's router snapshot.
CREATE TABLE catalog (
    id TEXT PRIMARY KEY,
    -- provider | model | backend
    kind TEXT NOT NULL,
    -- A provider's or model's name; a backend's id.
    name TEXT NOT NULL,
    -- A backend's provider or model id.
    parent TEXT,
    -- The object's fields (JSON), without its API key.
    doc TEXT NOT NULL,
    -- A provider's or backend's API key: written, used upstream, never returned.
    secret TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX catalog_kind_name ON catalog (kind, name);
CREATE INDEX catalog_parent ON catalog (parent);
