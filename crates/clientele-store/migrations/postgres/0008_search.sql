-- The `q` prefix search: every search term of a customer (see clientele_domain::search),
-- written in the transaction of each write. A prefix query is a range scan of the primary key
-- (byte order, COLLATE "C", so the range [q, q || U+10FFFF) holds exactly the prefixed terms).
CREATE TABLE customer_terms (
    term        TEXT COLLATE "C" NOT NULL,
    -- No foreign key: its per-row check made bulk sync several times slower; deleting a
    -- customer deletes its terms in the same statement batch (BatchTx::delete_many).
    customer_id TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (term, customer_id)
);
-- (customer_id, term): a probe "does this customer have a term in the range" is one index lookup.
CREATE INDEX customer_terms_by_customer ON customer_terms (customer_id, term);

-- Customers stored before this migration get their terms at the next start.
CREATE TABLE customer_terms_backfill (done BOOLEAN NOT NULL);
INSERT INTO customer_terms_backfill (done) VALUES (FALSE);

-- Archived customers are few: `archived=true` walks these small partial indexes per sort.
CREATE INDEX customers_archived_by_created ON customers (created_at, id) WHERE archived;
CREATE INDEX customers_archived_by_updated ON customers (updated_at, id) WHERE archived;
CREATE INDEX customers_archived_by_last_name ON customers (last_name_sort, id) WHERE archived;
