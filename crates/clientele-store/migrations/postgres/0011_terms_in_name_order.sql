-- The search terms keyed by (multiword, name_prefix, term, customer_id), each with its
-- customer's last-name sort key (docs/search.md):
-- * `multiword`: the term holds whitespace (a whole value of several words). A `q` without
--   whitespace matches such a term only where it matches the value's first word too, and a `q`
--   with whitespace matches no other term, so a query reads one of the two key ranges;
-- * `name_prefix` ahead of the term: the matches outside the last-name range of `q` are one
--   range of the key, not a filter over every term of the prefix;
-- * `last_name_sort`, in the primary key's entries: those matches are read in last-name order
--   by an index-only scan, without a customer row each.
-- The table is rebuilt empty and filled again from the customers at the next start (the
-- backfill of 0008), by the same code that writes the terms of every write.
DROP TABLE customer_terms;
CREATE TABLE customer_terms (
    multiword      BOOLEAN NOT NULL,
    name_prefix    BOOLEAN NOT NULL,
    term           TEXT COLLATE "C" NOT NULL,
    -- No foreign key: its per-row check made bulk sync several times slower; deleting a
    -- customer deletes its terms in the same statement batch (BatchTx::delete_many).
    customer_id    TEXT COLLATE "C" NOT NULL,
    last_name_sort TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (multiword, name_prefix, term, customer_id) INCLUDE (last_name_sort)
);
-- (customer_id, term): a probe "does this customer have a term in the range" is one index lookup.
CREATE INDEX customer_terms_by_customer ON customer_terms (customer_id, term);
UPDATE customer_terms_backfill SET done = FALSE;
