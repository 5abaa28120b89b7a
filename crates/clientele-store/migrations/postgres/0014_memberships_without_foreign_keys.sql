-- A customer's tags, groups and teams lose their foreign keys to customers, as its search terms
-- did (0012). PostgreSQL checks a foreign key with a trigger per inserted row, a query of its
-- own: 4 µs a row by hand, against 2.4 for the row and its indexes, and about 6 % of a bulk
-- sync's first send (docs/benchmarks.md). The cascade these keys gave is done by the one
-- statement that deletes customers (BatchTx::delete_many), and rows are only ever written by a
-- transaction that holds their customer's row, so none can outlive it.
ALTER TABLE customer_tags DROP CONSTRAINT customer_tags_customer_id_fkey;
ALTER TABLE customer_groups DROP CONSTRAINT customer_groups_customer_id_fkey;
ALTER TABLE customer_teams DROP CONSTRAINT customer_teams_customer_id_fkey;
