-- The customer schema (GET/PUT /v1/schema): one row, read inside every customer write
-- transaction so that all hub processes check writes against the same, latest schema.
CREATE TABLE customer_schema (
    id         INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    doc        TEXT    NOT NULL,          -- the schema as GET /v1/schema returns it
    updated_at BIGINT NOT NULL
);
