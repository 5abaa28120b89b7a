-- Idempotency keys: per API key, the request's fingerprint and, once it finished, its response.
CREATE TABLE idempotency_keys (
    api_key_id       TEXT    NOT NULL,
    key              TEXT    NOT NULL,
    fingerprint      BLOB    NOT NULL,
    created_at       INTEGER NOT NULL,
    completed_at     INTEGER,
    response_status  INTEGER,          -- NULL while the request is in flight
    response_headers TEXT,             -- JSON array of [name, value]
    response_body    BLOB,
    PRIMARY KEY (api_key_id, key)
);
CREATE INDEX idempotency_keys_by_created ON idempotency_keys (created_at);
