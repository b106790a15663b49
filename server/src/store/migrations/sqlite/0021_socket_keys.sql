-- A listener or connection found by its key in a host's state (a delta's update or removal)
-- without reading all of the host's: with a host's 200 connections, each lookup walked them all
-- (hostwatch-fill: most of the writer's time).
CREATE INDEX connections_key ON connections (host_id, local_port, remote_port);
CREATE INDEX listeners_key ON listeners (host_id, port);
