-- Runs and their measurements.
--
-- Measurements are stored as they are read: one row per step holding every series of that
-- step as packed little-endian f64 (a BLOB keeps NaN and ±Inf bit-exact, where a REAL
-- column would turn NaN into NULL), and per series a pyramid of summaries (count, min, max,
-- sum, last per bucket of 16, 64, 256, … steps) kept up to date as steps arrive, so that a
-- query over a million steps reads a thousand summary rows, and a one-step spike survives
-- in every bucket's min and max.

CREATE TABLE runs (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL,
    grp         TEXT,
    variant     TEXT,
    tags        TEXT    NOT NULL DEFAULT '[]',   -- JSON array of strings
    config      TEXT    NOT NULL DEFAULT 'null', -- JSON, as the trainer sent it
    layers      INTEGER NOT NULL,
    status      TEXT    NOT NULL,
    branch      INTEGER NOT NULL DEFAULT 0,      -- the live branch
    last_step   INTEGER,
    last_loss   BLOB,                            -- one packed f64
    tokens      INTEGER,
    steps       INTEGER NOT NULL DEFAULT 0,      -- stored steps, all branches
    seq         INTEGER NOT NULL DEFAULT 0,      -- arrival number of the run's newest step
    alerts      INTEGER NOT NULL DEFAULT 0,
    created_at  REAL    NOT NULL,
    updated_at  REAL    NOT NULL,
    seen_at     REAL    NOT NULL                 -- last sign of life from the trainer
);

-- History branches: a rewind starts branch n+1 from `fork_step` of its parent; the parent's
-- later steps stay stored as the abandoned branch.
CREATE TABLE branches (
    run_id      INTEGER NOT NULL REFERENCES runs(id),
    branch      INTEGER NOT NULL,
    parent      INTEGER,
    fork_step   INTEGER,                         -- last step shared with the parent
    created_at  REAL    NOT NULL,
    PRIMARY KEY (run_id, branch)
) WITHOUT ROWID;

-- The named series of a run: scalars (width 1) and layer statistics (width = layers).
CREATE TABLE series (
    run_id      INTEGER NOT NULL REFERENCES runs(id),
    id          INTEGER NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('scalar', 'layer')),
    name        TEXT    NOT NULL,
    width       INTEGER NOT NULL,
    PRIMARY KEY (run_id, id),
    UNIQUE (run_id, kind, name)
) WITHOUT ROWID;

-- One row per stored step. `seq` orders steps by arrival, for live subscribers that resume.
CREATE TABLE steps (
    run_id      INTEGER NOT NULL,
    branch      INTEGER NOT NULL,
    step        INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    data        BLOB    NOT NULL,
    PRIMARY KEY (run_id, branch, step)
) WITHOUT ROWID;
CREATE INDEX steps_by_seq ON steps (run_id, seq);

-- Bucket `bucket` of level `level` covers steps [bucket·level, (bucket+1)·level).
CREATE TABLE summaries (
    run_id      INTEGER NOT NULL,
    branch      INTEGER NOT NULL,
    series_id   INTEGER NOT NULL,
    level       INTEGER NOT NULL,
    bucket      INTEGER NOT NULL,
    data        BLOB    NOT NULL,
    PRIMARY KEY (run_id, branch, series_id, level, bucket)
) WITHOUT ROWID;

-- Alerts and other notable moments, in the order they happened.
CREATE TABLE events (
    id          INTEGER PRIMARY KEY,
    run_id      INTEGER NOT NULL REFERENCES runs(id),
    kind        TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    severity    TEXT    NOT NULL,
    step        INTEGER,
    message     TEXT    NOT NULL,
    time        REAL    NOT NULL
);
CREATE INDEX events_by_run ON events (run_id, id);
