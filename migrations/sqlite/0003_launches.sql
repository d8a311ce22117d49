-- Launched grids, so that they outlive the server: the whole record as JSON, and the process
-- ids of the trainers running for it (by variant index), to adopt them after a restart.
CREATE TABLE launches (
    id          INTEGER PRIMARY KEY,
    record      TEXT    NOT NULL,
    pids        TEXT    NOT NULL DEFAULT '{}',
    active      INTEGER NOT NULL,
    updated_at  REAL    NOT NULL
);
