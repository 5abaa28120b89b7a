-- The change feed: who may see each change, and how far retention has purged.
-- Commit order: every transaction that records changes takes the advisory lock
-- 0x636c6e74 ('clnt') right before it draws its sequence numbers and holds it until commit,
-- so seq order is commit order (see docs/change-feed.md).
ALTER TABLE changes ADD COLUMN teams TEXT[] NOT NULL DEFAULT '{}';

-- The highest seq purged by retention: a consumer whose position is below it missed changes.
CREATE TABLE change_feed_horizon (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    purged_through BIGINT  NOT NULL
);
INSERT INTO change_feed_horizon (id, purged_through) VALUES (1, 0);
