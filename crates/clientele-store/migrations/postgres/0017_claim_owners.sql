-- Which hub process holds an idempotency key in flight, and when each process was last seen:
-- a key held by a process that stopped being seen (killed, its machine lost) is taken over
-- within seconds instead of at the end of the claim's 10-minute lease.
CREATE TABLE hub_processes (
    incarnation TEXT   PRIMARY KEY,  -- a ULID drawn when the process opened the store
    seen_at     BIGINT NOT NULL      -- its last heartbeat, microseconds since the epoch
);
ALTER TABLE idempotency_keys ADD COLUMN owner TEXT;  -- NULL: claimed before owners were kept
