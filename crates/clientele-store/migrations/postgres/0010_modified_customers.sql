-- Customers modified since their creation (updated_at > created_at; never the other way round),
-- in each time order. A time window on one column sorted by the other splits its matches: the
-- ones whose sort key lies in the window itself are found by the sort order's own index (every
-- unmodified customer is among them: its two times are equal), the others were modified and are
-- walked here in sort order (docs/search.md). A create writes neither index; an update writes
-- both. The condition text must stay `updated_at > created_at`, as the queries write it, for
-- SQLite to use these indexes. Each also holds the other time, so that the window's condition
-- on it is checked in the index, without reading the rows of the modified customers it skips.
CREATE INDEX customers_modified_by_created ON customers (created_at, id, updated_at) WHERE updated_at > created_at;
CREATE INDEX customers_modified_by_updated ON customers (updated_at, id, created_at) WHERE updated_at > created_at;
