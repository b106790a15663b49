-- The rest of a file's latest state: compared by metadata only (above the agent's size cap), and
-- its inode.
ALTER TABLE files ADD COLUMN metadata_only INTEGER NOT NULL DEFAULT 0;
ALTER TABLE files ADD COLUMN inode INTEGER NOT NULL DEFAULT 0;
