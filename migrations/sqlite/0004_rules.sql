-- A run's rules (`PUT /api/v1/runs/{id}/rules`), as JSON; NULL: the rules of its config.
ALTER TABLE runs ADD COLUMN rules TEXT;
