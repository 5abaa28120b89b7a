-- A deletion is an erasure: the documents of an erased customer's earlier changes leave the feed
-- in the deletion's transaction, found through this index (by customer, in seq order: the rowid).
CREATE INDEX changes_by_customer ON changes (customer_id);

-- Customers erased before this migration leave it now.
UPDATE changes SET customer = NULL
WHERE customer IS NOT NULL
  AND customer_id IN (SELECT customer_id FROM changes WHERE kind = 'deleted');
