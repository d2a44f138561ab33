-- Which connection holds a dispatched message. A phone that reconnects (to this node or
-- another, or after a node was killed) takes back what older connections held, and a closing
-- connection returns only its own messages, never those already handed to its successor.
ALTER TABLE messages ADD COLUMN lease text;
CREATE INDEX messages_lease ON messages (lease) WHERE status = 'dispatched';
