-- Operator commands are rows, so that they survive a server restart and a trainer that
-- reconnects; the status moves queued → delivered → applied | rejected.
CREATE TABLE commands (
    id           INTEGER PRIMARY KEY,
    run_id       INTEGER NOT NULL REFERENCES runs(id),
    body         TEXT    NOT NULL,               -- the command as JSON
    status       TEXT    NOT NULL,
    applied_step INTEGER,
    message      TEXT,
    issued_by    TEXT    NOT NULL,
    created_at   REAL    NOT NULL,
    updated_at   REAL    NOT NULL
);
CREATE INDEX commands_by_run ON commands (run_id, id);
