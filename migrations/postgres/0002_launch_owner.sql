-- Which server runs a launch: on a database several servers share, each resumes only its own.
ALTER TABLE launches ADD COLUMN owner TEXT NOT NULL DEFAULT '';
