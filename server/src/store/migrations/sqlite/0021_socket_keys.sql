-- A listener or connection found by its key in a host's state (a delta's update or removal)
-- without reading all of the host's: with a host's 200 connections, each lookup walked them all
-- (hostwatch-fill: most of the writer's time). They replace the indexes on the host alone, whose
-- every use they serve (the listings read a host's sockets in this order), so that a report
-- maintains no more indexes than before.
DROP INDEX connections_host;
CREATE INDEX connections_key ON connections (host_id, local_port, remote_port);
DROP INDEX listeners_host;
CREATE INDEX listeners_key ON listeners (host_id, port);
