-- Customers: the response document plus the columns that are looked up, unique or sorted on.
CREATE TABLE customers (
    id             TEXT    NOT NULL UNIQUE,
    external_id    TEXT             UNIQUE,
    email_norm     TEXT             UNIQUE,   -- lower-cased email: uniqueness is case-insensitive
    username       TEXT             UNIQUE,
    last_name_sort TEXT    NOT NULL,          -- lower-cased last name
    archived       INTEGER NOT NULL,
    version        INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,          -- microseconds since the epoch
    updated_at     INTEGER NOT NULL,
    password_hash  TEXT,                      -- Argon2id PHC string; never in doc
    doc            TEXT    NOT NULL           -- the customer as the API returns it
);
CREATE INDEX customers_by_created ON customers (created_at, id);
CREATE INDEX customers_by_updated ON customers (updated_at, id);
CREATE INDEX customers_by_last_name ON customers (last_name_sort, id);

-- Every change, written in the transaction of the change itself; the change feed reads it.
CREATE TABLE changes (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id TEXT    NOT NULL,
    external_id TEXT,
    kind        TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    customer    TEXT                           -- NULL for deletions
);

CREATE TABLE api_keys (
    id               TEXT    PRIMARY KEY,
    name             TEXT    NOT NULL,
    role             TEXT    NOT NULL,
    teams            TEXT    NOT NULL,         -- JSON array of team codes
    lookup_hash      BLOB    NOT NULL UNIQUE,  -- HMAC of the secret under the master key
    secret_encrypted BLOB    NOT NULL,         -- the secret under the master key, for signatures
    created_at       INTEGER NOT NULL,
    revoked_at       INTEGER
);
