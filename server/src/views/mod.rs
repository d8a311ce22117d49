//! What the pages show: askama template structs and the formatting of their values.
//!
//! Views are built from what storage already returned (protocol types) and never query
//! anything. Numbers and times are formatted here, in [`format`], so every page writes them
//! the same way; `static/keel.js` formats live updates by the same rules.

pub mod compare;
pub mod csv;
pub mod format;
pub mod run;
pub mod runs;
pub mod sweep;

pub use compare::ComparePage;
pub use run::RunPage;
pub use runs::{LaunchPanel, RunsPage, RunsTablePartial};
