-- Signed-in browser sessions, shared by every server on the database and kept across
-- restarts. A session id is stored only as its SHA-256 (hex), so a copy of the database
-- signs no browser in. `person` names the person it belongs to (NULL for a session signed in
-- with the server's own token): their current role applies, and removing them ends it.
CREATE TABLE sessions (
    id_hash     TEXT    PRIMARY KEY,
    csrf        TEXT    NOT NULL,
    person      TEXT,
    role        TEXT    NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    expires_at  REAL    NOT NULL
);
CREATE INDEX sessions_expiry ON sessions (expires_at);
