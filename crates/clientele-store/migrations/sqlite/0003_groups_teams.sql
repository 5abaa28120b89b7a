-- Groups (a hierarchy through `parent`, kept free of cycles by the hub) and teams.
CREATE TABLE groups (
    code           TEXT    PRIMARY KEY,
    title          TEXT,
    description    TEXT,
    subscribable   INTEGER NOT NULL,
    subscribe_text TEXT,
    parent         TEXT,
    created_at     INTEGER NOT NULL,          -- microseconds since the epoch
    updated_at     INTEGER NOT NULL
);
CREATE INDEX groups_by_parent ON groups (parent);

CREATE TABLE teams (
    code       TEXT    PRIMARY KEY,
    name       TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- A customer's tags, groups and teams as indexed rows (the doc holds them too), written in the
-- transaction of every customer write: list filters, tag counts and team scopes read these.
CREATE TABLE customer_tags (
    customer_id TEXT NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    tag         TEXT NOT NULL,
    PRIMARY KEY (customer_id, tag)
);
CREATE INDEX customer_tags_by_tag ON customer_tags (tag, customer_id);

CREATE TABLE customer_groups (
    customer_id TEXT    NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    group_code  TEXT    NOT NULL,
    subscribed  INTEGER NOT NULL,
    PRIMARY KEY (customer_id, group_code)
);
CREATE INDEX customer_groups_by_group ON customer_groups (group_code, customer_id);

CREATE TABLE customer_teams (
    customer_id TEXT NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    team_code   TEXT NOT NULL,
    PRIMARY KEY (customer_id, team_code)
);
CREATE INDEX customer_teams_by_team ON customer_teams (team_code, customer_id);

-- Customers stored before this migration carry tags in their documents only (groups and teams
-- could not be set before it): index them.
INSERT OR IGNORE INTO customer_tags (customer_id, tag)
SELECT c.id, t.value FROM customers c, json_each(c.doc, '$.tags') t;
