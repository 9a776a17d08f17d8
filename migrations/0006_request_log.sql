-- Recent requests (the access-log record), kept for store.request_log_retention; written in
-- batches off the request path. Bodies only when store.log_bodies is on.
CREATE TABLE request_log (
    id TEXT PRIMARY KEY,
    -- The request's x-request-id (a client may send its own: not unique).
    request_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    -- The caller: a key's name (or an OIDC subject); empty on an open gateway.
    key_name TEXT NOT NULL,
    team TEXT NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    upstream_model TEXT NOT NULL,
    status BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    spend_micro BIGINT NOT NULL,
    -- The whole access-log record (JSON).
    record TEXT NOT NULL,
    request_body TEXT,
    response_body TEXT
);
CREATE INDEX request_log_at ON request_log (at, id);
CREATE INDEX request_log_key ON request_log (key_name, at);
CREATE INDEX request_log_request_id ON request_log (request_id);
