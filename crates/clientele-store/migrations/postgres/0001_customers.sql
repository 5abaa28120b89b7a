-- Customers: the response document plus the columns that are looked up, unique or sorted on.
-- Sorted text columns use the "C" collation so keyset order is byte order, as on SQLite.
CREATE TABLE customers (
    id             TEXT    COLLATE "C" NOT NULL,
    external_id    TEXT,
    email_norm     TEXT,                      -- lower-cased email: uniqueness is case-insensitive
    username       TEXT,
    last_name_sort TEXT    COLLATE "C" NOT NULL, -- lower-cased last name
    archived       BOOLEAN NOT NULL,
    version        BIGINT  NOT NULL,
    created_at     BIGINT  NOT NULL,          -- microseconds since the epoch
    updated_at     BIGINT  NOT NULL,
    password_hash  TEXT,                      -- Argon2id PHC string; never in doc
    doc            TEXT    NOT NULL,          -- the customer as the API returns it
    CONSTRAINT customers_pkey PRIMARY KEY (id),
    CONSTRAINT customers_external_id_key UNIQUE (external_id),
    CONSTRAINT customers_email_norm_key UNIQUE (email_norm),
    CONSTRAINT customers_username_key UNIQUE (username)
);
CREATE INDEX customers_by_created ON customers (created_at, id);
CREATE INDEX customers_by_updated ON customers (updated_at, id);
CREATE INDEX customers_by_last_name ON customers (last_name_sort, id);

-- Every change, written in the transaction of the change itself; the change feed reads it.
CREATE TABLE changes (
    seq         BIGSERIAL PRIMARY KEY,
    customer_id TEXT   NOT NULL,
    external_id TEXT,
    kind        TEXT   NOT NULL,
    version     BIGINT NOT NULL,
    at          BIGINT NOT NULL,
    customer    TEXT                           -- NULL for deletions
);

CREATE TABLE api_keys (
    id               TEXT   PRIMARY KEY,
    name             TEXT   NOT NULL,
    role             TEXT   NOT NULL,
    teams            TEXT   NOT NULL,          -- JSON array of team codes
    lookup_hash      BYTEA  NOT NULL UNIQUE,   -- HMAC of the secret under the master key
    secret_encrypted BYTEA  NOT NULL,          -- the secret under the master key, for signatures
    created_at       BIGINT NOT NULL,
    revoked_at       BIGINT
);
