//! End-to-end tests of the HTTP API against a real server and a real SQLite file.

mod browser;
mod commands;
mod compare;
mod controls;
mod export;
mod fuzz;
mod helpers;
mod incidents;
mod ingest;
mod launches;
mod live;
mod pages;
mod postgres;
mod queries;
mod reads;
mod refusals;
mod replicas;
mod sessions;
mod summaries;
mod users;
mod webdriver;
