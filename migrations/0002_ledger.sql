-- Spend and tokens per principal and model, aggregated per hour: the source of truth for
-- budgets (the period's spend is loaded from here at start) and for /admin/v1/spend.
CREATE TABLE spend_ledger (
    -- Unix hour (seconds / 3600), UTC.
    hour BIGINT NOT NULL,
    -- key:<name> or oidc:<subject>.
    principal TEXT NOT NULL,
    -- The key's team when the spend was booked ('' when none).
    team TEXT NOT NULL,
    -- provider/upstream model.
    model TEXT NOT NULL,
    requests BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    spend_micro BIGINT NOT NULL,
    PRIMARY KEY (hour, principal, model)
);
CREATE INDEX spend_ledger_principal ON spend_ledger (principal, hour);
