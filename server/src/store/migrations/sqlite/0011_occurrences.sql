-- Every event judged: how many times a finding's item was seen to start (10,000 runs of one
-- program are one finding), and whether any occurrence was gone before it was judged (such a
-- finding resolves only by acknowledgement). The index serves the per-host budget of new
-- findings, counted over the last minute's openings.
ALTER TABLE findings ADD COLUMN occurrences INTEGER NOT NULL DEFAULT 1;
ALTER TABLE findings ADD COLUMN transient INTEGER NOT NULL DEFAULT 0;
CREATE INDEX findings_opened ON findings (host_id, opened_at);

-- Which reports an item's judgement came before: the last sequence number its agent had written
-- when the report that started it was sent (its number plus the backlog spooled behind it). A
-- later report numbered up to that ends an item that was gone before the collector could judge
-- it alive; its finding is transient.
ALTER TABLE processes ADD COLUMN judged_through INTEGER NOT NULL DEFAULT 0;
ALTER TABLE listeners ADD COLUMN judged_through INTEGER NOT NULL DEFAULT 0;
ALTER TABLE connections ADD COLUMN judged_through INTEGER NOT NULL DEFAULT 0;
