-- Which derivation of term rows the stored ones follow (TERM_ROWS_VERSION in the store's
-- search.rs): an update deletes the rows of the terms it removes by recomputing them from the
-- stored customer, so a hub that derives them otherwise rebuilds every customer's rows at
-- start. The rows stored until now follow version 1.
ALTER TABLE customer_terms_backfill ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
