-- State kept for callers between requests (stored Responses), when a store is configured:
-- the truth every replica reads (a delete on one holds for all). Keys carry the owner's scope.
CREATE TABLE kv_state (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (namespace, key)
);
CREATE INDEX kv_state_expires ON kv_state (expires_at);
