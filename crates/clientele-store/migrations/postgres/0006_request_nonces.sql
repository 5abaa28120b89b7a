-- Nonces of accepted signed requests, per API key: a signature is accepted once. Kept in the
-- database (not in memory) so that replays are refused across several hub processes; rows
-- older than twice the 300 s window can never match an acceptable request and are purged.
CREATE TABLE request_nonces (
    api_key_id TEXT    NOT NULL,
    nonce      TEXT    NOT NULL,
    seen_at    BIGINT NOT NULL,          -- microseconds since the epoch
    PRIMARY KEY (api_key_id, nonce)
);
CREATE INDEX request_nonces_by_seen ON request_nonces (seen_at);
