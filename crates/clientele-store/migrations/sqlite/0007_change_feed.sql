-- The change feed: who may see each change, and how far retention has purged.
-- SQLite runs one write transaction at a time, so seq order is commit order already.
ALTER TABLE changes ADD COLUMN teams TEXT NOT NULL DEFAULT '[]';  -- JSON array of team codes

-- The highest seq purged by retention: a consumer whose position is below it missed changes.
CREATE TABLE change_feed_horizon (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    purged_through INTEGER NOT NULL
);
INSERT INTO change_feed_horizon (id, purged_through) VALUES (1, 0);
