-- The search terms keyed by (multiword, name_prefix, name_bucket, term, customer_id): the
-- bucket of the last-name order their customer is in (the first character of its sort key,
-- see search::name_bucket), ahead of the term. The matches of `q` outside its last-name range are
-- then read bucket by bucket in last-name order, so the first page of a `q` with very many such
-- matches reads the first bucket's instead of all of them (185,000 entries for `q=company 1`
-- on 1,000,000 customers; docs/search.md). Other term queries seek the term range in every
-- bucket. Rebuilt empty and filled again from the customers at the next start (the backfill of
-- 0008), by the same code that writes the terms of every write.
DROP TABLE customer_terms;
CREATE TABLE customer_terms (
    multiword      BOOLEAN  NOT NULL,
    name_prefix    BOOLEAN  NOT NULL,
    name_bucket    SMALLINT NOT NULL,
    term           TEXT COLLATE "C" NOT NULL,
    -- No foreign key: its per-row check made bulk sync several times slower; deleting a
    -- customer deletes its terms in the same statement batch (BatchTx::delete_many).
    customer_id    TEXT COLLATE "C" NOT NULL,
    last_name_sort TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (multiword, name_prefix, name_bucket, term, customer_id) INCLUDE (last_name_sort)
);
-- (customer_id, term): a probe "does this customer have a term in the range" is one index lookup.
CREATE INDEX customer_terms_by_customer ON customer_terms (customer_id, term);
UPDATE customer_terms_backfill SET done = FALSE;
