-- What the built-in rules read of a process: an executable replaced by its package, a network
-- socket on a shell's standard input or output, and since when it has run hot (kept across
-- reports, cleared when it cools).
ALTER TABLE processes ADD COLUMN exe_replaced INTEGER NOT NULL DEFAULT 0;
ALTER TABLE processes ADD COLUMN stdio_socket TEXT;
ALTER TABLE processes ADD COLUMN cpu_high_since TEXT;
CREATE INDEX processes_hot ON processes (cpu_high_since) WHERE cpu_high_since IS NOT NULL;
