-- The search terms keyed by (multiword, name_prefix, term, customer_id), each with its
-- customer's last-name sort key (docs/search.md):
-- * `multiword`: the term holds whitespace (a whole value of several words). A `q` without
--   whitespace matches such a term only where it matches the value's first word too, and a `q`
--   with whitespace matches no other term, so a query reads one of the two key ranges;
-- * `name_prefix` ahead of the term: the matches outside the last-name range of `q` are one
--   range of the key, not a filter over every term of the prefix;
-- * `last_name_sort`: those matches are read in last-name order from the term index alone,
--   without a customer row each.
-- The table is rebuilt empty and filled again from the customers at the next start (the
-- backfill of 0008), by the same code that writes the terms of every write.
DROP TABLE customer_terms;
CREATE TABLE customer_terms (
    multiword      INTEGER NOT NULL,
    name_prefix    INTEGER NOT NULL,
    term           TEXT    NOT NULL,
    customer_id    TEXT    NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    last_name_sort TEXT    NOT NULL,
    PRIMARY KEY (multiword, name_prefix, term, customer_id)
) WITHOUT ROWID;
CREATE INDEX customer_terms_by_customer ON customer_terms (customer_id);
UPDATE customer_terms_backfill SET done = 0;
