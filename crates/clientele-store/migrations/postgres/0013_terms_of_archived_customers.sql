-- Whether the term's customer is archived, and a small partial index of those terms: a `q` with
-- `archived=true` counts and reads the matches among archived customers (a few percent of all)
-- there, instead of probing the terms of every archived customer it walks (`archived=true&q=smi`:
-- 4,000 probes for a first page on 1,000,000 customers; docs/search.md). An update that archives
-- or restores a customer rewrites its terms.
ALTER TABLE customer_terms ADD COLUMN archived BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE customer_terms SET archived = TRUE
 WHERE customer_id IN (SELECT id FROM customers WHERE archived);
CREATE INDEX customer_terms_of_archived
    ON customer_terms (multiword, name_prefix, term, customer_id) WHERE archived;
