//! The runs page (`/`): one table row per run, newest first, and the launch panel when the
//! server launches grids. The table is its own partial so the page and the fragment the page
//! refetches after a reconnect are one template.

use askama::Template;
use keel_protocol::RunSummary;

use super::format;

#[derive(Template)]
#[template(path = "pages/runs.html")]
pub struct RunsPage {
    pub table: RunsTablePartial,
    /// The launch panel; `None` when the server does not launch grids.
    pub launch: Option<LaunchPanel>,
    /// The server's [`crate::notices`], oldest first.
    pub notices: Vec<String>,
}

/// What the launch panel needs from the server; the grids and launches themselves the page
/// script reads from the API.
pub struct LaunchPanel {
    /// The session's CSRF token: a visitor who is not signed in gets a sign-in link instead of
    /// the form and the cancel buttons.
    pub csrf: Option<String>,
    /// Who is signed in when they may not launch (`bob (operator)`).
    pub who: Option<String>,
    pub max_trainers: usize,
    /// Under SLURM, the jobs' options in a few words (`partition gpu, gres gpu:1`, or
    /// `the cluster's defaults`); `None` when variants train on this server.
    pub slurm: Option<String>,
    /// Where the grids come from ("the built-in grids"), as a sentence's object.
    pub grids: String,
}

impl RunsPage {
    /// The CSRF token the page carries, if any.
    pub fn csrf(&self) -> Option<&str> {
        self.launch.as_ref().and_then(|l| l.csrf.as_deref())
    }
}

#[derive(Template)]
#[template(path = "partials/runs_table.html")]
pub struct RunsTablePartial {
    pub rows: Vec<RunRow>,
    /// The page's place in the list, when the runs fill more than one page.
    pub pages: Option<Pages>,
}

/// Where one page of the runs table stands in the whole list.
pub struct Pages {
    /// The `before` of this page (None: the newest runs).
    pub before: Option<i64>,
    /// The `before` of the next, older page, if there is one.
    pub older: Option<i64>,
    pub total: String,
    pub shown: String,
}

/// One run, display-ready.
pub struct RunRow {
    pub id: i64,
    pub name: String,
    pub group: String,
    /// The group, percent-encoded for `/compare?group=…`.
    pub group_query: String,
    pub status: &'static str,
    pub last_step: String,
    pub loss: String,
    pub loss_bad: bool,
    pub tokens: String,
    /// Seconds since the epoch of the last change, for the page to keep the age current.
    pub updated_at: f64,
    pub age: String,
    pub alerts: u64,
    /// Incidents not yet acknowledged.
    pub open_incidents: u64,
}

impl RunsTablePartial {
    pub fn new(runs: &[RunSummary], now: f64) -> RunsTablePartial {
        let rows = runs.iter().map(|r| RunRow::new(r, now)).collect();
        RunsTablePartial { rows, pages: None }
    }

    /// Says which page of `total` runs this is; one page of them all says nothing.
    pub fn paged(mut self, before: Option<i64>, older: Option<i64>, total: u64) -> Self {
        if before.is_some() || older.is_some() {
            self.pages = Some(Pages {
                before,
                older,
                total: format::count(Some(total)),
                shown: format::count(Some(self.rows.len() as u64)),
            });
        }
        self
    }
}

/// A URL query value: unreserved characters as they are, every other byte as `%XX`.
pub fn query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl RunRow {
    pub fn new(r: &RunSummary, now: f64) -> RunRow {
        let loss = r.last_loss.map(|m| m.get());
        RunRow {
            id: r.id,
            name: r.name.clone(),
            group: r.group.clone().unwrap_or_default(),
            group_query: query_value(r.group.as_deref().unwrap_or_default()),
            status: r.status.as_str(),
            last_step: format::count(r.last_step),
            loss: format::metric(loss),
            loss_bad: format::non_finite(loss),
            tokens: format::tokens(r.tokens),
            updated_at: r.updated_at,
            age: format::age(now, r.updated_at),
            alerts: r.alerts,
            open_incidents: r.open_incidents,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_are_percent_encoded_for_the_compare_link() {
        assert_eq!(query_value("ablation-ladder"), "ablation-ladder");
        assert_eq!(query_value("a b&c/é"), "a%20b%26c%2F%C3%A9");
    }
}
