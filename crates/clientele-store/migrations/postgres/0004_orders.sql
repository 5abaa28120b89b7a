-- Orders: the response document plus the columns looked up and paged on. The foreign key is
-- the backstop of "a customer with orders cannot be deleted" (checked first, per item, by the
-- hub).
CREATE TABLE orders (
    id          TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    customer_id TEXT COLLATE "C" NOT NULL REFERENCES customers (id),
    reference   TEXT    NOT NULL,
    created_at  BIGINT NOT NULL,          -- microseconds since the epoch
    doc         TEXT    NOT NULL           -- the order as the API returns it
);
CREATE INDEX orders_by_customer ON orders (customer_id, id);
CREATE INDEX orders_by_reference ON orders (reference);
