-- Incidents: consecutive alerts of one kind on one run, as one thing to look at and
-- acknowledge. `open_incidents` counts a run's unacknowledged ones, for the runs list.
CREATE TABLE incidents (
    id           INTEGER PRIMARY KEY,
    run_id       INTEGER NOT NULL REFERENCES runs(id),
    name         TEXT    NOT NULL,               -- the alert's name
    severity     TEXT    NOT NULL,               -- the worst of its alerts
    start_step   INTEGER NOT NULL,
    peak_step    INTEGER NOT NULL,
    end_step     INTEGER NOT NULL,
    peak_size    REAL    NOT NULL,               -- how far the peak alert went, in its own units
    peak_message TEXT    NOT NULL,
    alerts       INTEGER NOT NULL,
    opened_at    REAL    NOT NULL,
    updated_at   REAL    NOT NULL,
    acked_by     TEXT,
    acked_at     REAL
);
CREATE INDEX incidents_by_run ON incidents (run_id, name, end_step);
ALTER TABLE runs ADD COLUMN open_incidents INTEGER NOT NULL DEFAULT 0;
-- A run's alert thresholds set through the API (`PUT /api/v1/runs/{id}/thresholds`), as
-- JSON; NULL: those of its config's `alerts`.
ALTER TABLE runs ADD COLUMN thresholds TEXT;
