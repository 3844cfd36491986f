-- Admin writes made over the admin API record the request they came in and
-- the client's address (both covered by the row's hash when present; rows
-- written before this migration hash as they did).
ALTER TABLE audit_log
    ADD COLUMN request_id text,
    ADD COLUMN client_ip  text;
CREATE INDEX audit_log_actor ON audit_log (actor);
