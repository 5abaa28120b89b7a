-- A deletion is an erasure: the documents of an erased customer's earlier changes leave the feed
-- in the deletion's transaction, found through this index and locked in seq order.
CREATE INDEX changes_by_customer ON changes (customer_id, seq);

-- Customers erased before this migration leave it now.
UPDATE changes SET customer = NULL
WHERE customer IS NOT NULL
  AND customer_id IN (SELECT customer_id FROM changes WHERE kind = 'deleted');
