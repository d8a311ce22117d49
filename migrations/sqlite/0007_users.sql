-- Named people with roles. A token is stored only as its SHA-256 (hex); the token itself is
-- shown once, when the person is added.
CREATE TABLE users (
    name        TEXT    PRIMARY KEY,
    role        TEXT    NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    token_hash  TEXT    NOT NULL UNIQUE,
    created_at  REAL    NOT NULL
);

-- Who created a run, and who last set its rules (a rule's firing names them) and thresholds.
ALTER TABLE runs ADD COLUMN created_by TEXT;
ALTER TABLE runs ADD COLUMN rules_by TEXT;
ALTER TABLE runs ADD COLUMN thresholds_by TEXT;
