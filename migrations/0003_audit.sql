-- Who changed what through the admin API, and when (never a secret).
CREATE TABLE audit_log (
    id TEXT PRIMARY KEY,
    -- Unix milliseconds.
    at BIGINT NOT NULL,
    -- The credential that made the change (`admin-key`) and the client's address.
    actor TEXT NOT NULL,
    client TEXT NOT NULL,
    -- key.create, key.update, key.revoke
    action TEXT NOT NULL,
    -- The object's id.
    target TEXT NOT NULL,
    -- What changed (JSON).
    detail TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at, id);
