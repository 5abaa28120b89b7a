-- Whether a search term is a prefix of its customer's last-name sort key. Every customer such a
-- term matches sits in the query's prefix range of the last_name order, so `sort=last_name`
-- seeks that range in customers_by_last_name and reads only the other terms through this
-- table (docs/search.md). A term flagged false wrongly would only cost speed, never a match.
ALTER TABLE customer_terms ADD COLUMN name_prefix BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE customer_terms t SET name_prefix = TRUE
  FROM customers c
 WHERE c.id = t.customer_id AND starts_with(c.last_name_sort, t.term);
-- In the primary key's entries, so that counting the other terms of a prefix is an index-only
-- scan (no second index to write).
ALTER TABLE customer_terms
    DROP CONSTRAINT customer_terms_pkey,
    ADD CONSTRAINT customer_terms_pkey PRIMARY KEY (term, customer_id) INCLUDE (name_prefix);
