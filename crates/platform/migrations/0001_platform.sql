-- Accounts hold money in integer micro-units (1e-6 of the currency): exact, never floats.
-- `balance` is what the account owns; `reserved` is held by requests still running, so
-- the spendable amount is balance - reserved.
CREATE TABLE accounts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    tier TEXT NOT NULL DEFAULT 'default',
    balance BIGINT NOT NULL DEFAULT 0,
    reserved BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

-- Only a SHA-256 of each key is kept; `prefix` is its first characters, for lists.
CREATE TABLE api_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id BIGINT NOT NULL REFERENCES accounts (id),
    hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at BIGINT
);

-- Money added to an account (top-ups); charges are the usage rows' `cost`.
CREATE TABLE credits (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id BIGINT NOT NULL REFERENCES accounts (id),
    amount BIGINT NOT NULL,
    note TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- The most each running request may cost, held until it settles. `instance` names the
-- server that holds it, so a restarted server releases its own leftovers.
CREATE TABLE reservations (
    request_id TEXT PRIMARY KEY,
    account_id BIGINT NOT NULL,
    key_id BIGINT,
    model TEXT NOT NULL,
    amount BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    instance TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX reservations_instance ON reservations (instance);

-- One row per settled request; account 0 is open access (no keys configured).
CREATE TABLE usage_records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    account_id BIGINT NOT NULL,
    key_id BIGINT,
    model TEXT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cost BIGINT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Per account, model and UTC day, kept current by every settlement, so reports never
-- scan usage rows.
CREATE TABLE usage_daily (
    account_id BIGINT NOT NULL,
    model TEXT NOT NULL,
    day BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cost BIGINT NOT NULL,
    PRIMARY KEY (account_id, model, day)
);
