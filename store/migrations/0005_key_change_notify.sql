-- Every node caches key lookups; a revoked, rotated, re-scoped or deleted key must stop
-- working at once everywhere, so each change NOTIFYs its digest at commit.
CREATE FUNCTION smsgw_notify_key_change() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('smsgw_keys', OLD.digest);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER api_keys_changed AFTER UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION smsgw_notify_key_change();
