//! End-to-end tests of the HTTP API against a real server and a real SQLite file.

mod commands;
mod helpers;
mod ingest;
mod live;
mod queries;
mod refusals;
