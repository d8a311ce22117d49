//! The keel server an import writes to: finding a run by name and group or creating it, and
//! sending steps in batches. A refusal (4xx) is an error carrying the server's own message;
//! a server that does not answer is waited for a while, then an error naming its URL.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use keel_protocol::{IngestBatch, IngestReply, RunSpec, RunSummary, StepRecord};
use keel_trainer::link::{Client, Sent};

/// Most steps per request (the server takes up to 100 000).
const MAX_BATCH_STEPS: usize = 10_000;
/// Most values per request, so a wide run's batch stays far below the server's 32 MiB.
const MAX_BATCH_VALUES: usize = 500_000;
/// Runs per page of `GET /api/v1/runs` (its most).
const PAGE: usize = 10_000;

pub struct Server {
    client: Client,
    url: String,
    /// How long a server that does not answer is waited for.
    patience: Duration,
}

impl Server {
    /// The server at `url`, once it has answered: a wrong URL fails at once, while a server
    /// that goes away later is waited for.
    pub fn connect(url: &str, token: String) -> anyhow::Result<Self> {
        let mut server = Server {
            client: Client::new(url, Some(token), Duration::from_secs(60)),
            url: url.trim_end_matches('/').to_owned(),
            patience: Duration::ZERO,
        };
        server.runs("/api/v1/runs?limit=1")?;
        server.patience = Duration::from_secs(30);
        Ok(server)
    }

    /// The newest run named `name` in `group`, if there is one.
    pub fn find_run(&self, name: &str, group: Option<&str>) -> anyhow::Result<Option<RunSummary>> {
        let mut before = None;
        loop {
            let mut path = format!("/api/v1/runs?limit={PAGE}");
            if let Some(id) = before {
                path += &format!("&before={id}");
            }
            let page = self.runs(&path)?;
            let found = page
                .iter()
                .find(|r| r.name == name && r.group.as_deref() == group);
            if found.is_some() || page.len() < PAGE {
                return Ok(found.cloned());
            }
            before = page.last().map(|r| r.id);
        }
    }

    fn runs(&self, path: &str) -> anyhow::Result<Vec<RunSummary>> {
        let mut body = self.call("the list of runs", || self.client.get(path))?;
        body.read_json().context("reading the list of runs")
    }

    pub fn create_run(&self, spec: &RunSpec) -> anyhow::Result<i64> {
        let what = format!("the run `{}`", spec.name);
        let created: keel_protocol::CreatedRun = self
            .call(&what, || self.client.post("/api/v1/runs", spec))?
            .read_json()
            .context("reading the new run's id")?;
        Ok(created.id)
    }

    /// Sends one batch of steps (see [`batches`]) to run `id`.
    pub fn send(&self, id: i64, steps: Vec<StepRecord>) -> anyhow::Result<IngestReply> {
        let what = format!(
            "the steps from {} of run {id}",
            steps.first().map_or(0, |s| s.step)
        );
        let batch = IngestBatch {
            branch: None,
            steps,
        };
        let path = format!("/api/v1/runs/{id}/steps");
        let mut body = self.call(&what, || self.client.post(&path, &batch))?;
        body.read_json()
            .context("reading the server's reply to the steps")
    }

    /// One request, retried while the server is away (for [`Self::patience`]) or busy.
    fn call(&self, what: &str, send: impl Fn() -> Sent) -> anyhow::Result<ureq::Body> {
        let give_up = Instant::now() + self.patience;
        loop {
            match send() {
                Sent::Ok(body) => return Ok(body),
                Sent::Refused(code, body) => {
                    bail!(
                        "the server refused {what} ({code}): {}",
                        server_error(&body)
                    )
                }
                Sent::Retry(why, _) if Instant::now() >= give_up => {
                    bail!("cannot reach the keel server at {}: {why}", self.url)
                }
                Sent::Retry(_, after) => {
                    std::thread::sleep(after.unwrap_or(Duration::from_millis(500)))
                }
            }
        }
    }
}

/// The `error` of a refusal's JSON body, or the body itself.
fn server_error(body: &str) -> String {
    let error = serde_json::from_str::<serde_json::Value>(body).ok();
    match error.as_ref().and_then(|e| e["error"].as_str()) {
        Some(message) => message.to_owned(),
        None => body.trim().to_owned(),
    }
}

/// `steps` cut into requests of at most [`MAX_BATCH_STEPS`] steps and about
/// [`MAX_BATCH_VALUES`] values.
pub fn batches(steps: Vec<StepRecord>) -> Vec<Vec<StepRecord>> {
    let mut out: Vec<Vec<StepRecord>> = Vec::new();
    let mut values = 0;
    for step in steps {
        let width = super::steps::values(&step);
        let full = out
            .last()
            .is_none_or(|b| b.len() >= MAX_BATCH_STEPS || values + width > MAX_BATCH_VALUES);
        if full {
            out.push(Vec::new());
            values = 0;
        }
        values += width;
        out.last_mut().expect("a batch").push(step);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_go_in_batches_of_at_most_ten_thousand_and_half_a_million_values() {
        let steps = (0..25_000).map(StepRecord::at).collect();
        let sizes: Vec<usize> = batches(steps).iter().map(Vec::len).collect();
        assert_eq!(sizes, [10_000, 10_000, 5_000]);

        let wide = |s| {
            let mut r = StepRecord::at(s);
            r.layers
                .insert("x".into(), vec![keel_protocol::Metric(1.0); 4096]);
            r
        };
        let sizes: Vec<usize> = batches((0..300).map(wide).collect())
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, [122, 122, 56]);
        assert!(batches(Vec::new()).is_empty());
    }

    #[test]
    fn a_refusal_shows_the_servers_message() {
        assert_eq!(
            server_error(r#"{"error":"run 9 not found"}"#),
            "run 9 not found"
        );
        assert_eq!(server_error("Bad Gateway\n"), "Bad Gateway");
    }
}
