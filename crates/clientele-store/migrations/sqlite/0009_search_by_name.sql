-- Whether a search term is a prefix of its customer's last-name sort key. Every customer such a
-- term matches sits in the query's prefix range of the last_name order, so `sort=last_name`
-- seeks that range in customers_by_last_name and reads only the other terms through this
-- table (docs/search.md). A term flagged 0 wrongly would only cost speed, never a match.
ALTER TABLE customer_terms ADD COLUMN name_prefix INTEGER NOT NULL DEFAULT 0;
UPDATE customer_terms SET name_prefix = 1
 WHERE EXISTS (SELECT 1 FROM customers c
                WHERE c.id = customer_terms.customer_id
                  AND substr(c.last_name_sort, 1, length(customer_terms.term)) = customer_terms.term);
