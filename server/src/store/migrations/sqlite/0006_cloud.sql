-- What the cloud's metadata service says about each host (proto CloudFacts as JSON), and its
-- instance id apart, to find a host by it.
ALTER TABLE hosts ADD COLUMN cloud TEXT;
ALTER TABLE hosts ADD COLUMN instance_id TEXT;
CREATE INDEX hosts_instance_id ON hosts (instance_id);
