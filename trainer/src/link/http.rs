//! The HTTP calls a trainer makes to a keel server, and how their failures are classified.
//!
//! A 2xx is success; a 4xx means the request itself is wrong (log it, drop it, never retry);
//! a 5xx or a connection failure means the server is away (keep the data, retry later).

use std::time::Duration;

use anyhow::{Result, bail};
use keel_protocol::{CommandRecord, CreatedRun, RunSpec};
use serde::Serialize;

/// The outcome of one request, sorted by what the caller must do next.
#[derive(Debug)]
pub enum Sent {
    Ok(ureq::Body),
    /// The server is unreachable, failing or busy: try again later — after the wait it asked
    /// for (`503` with `Retry-After`), when it asked for one.
    Retry(String, Option<Duration>),
    /// The server refused this request: retrying cannot help.
    Refused(u16, String),
}

/// A small HTTP client bound to one server and token.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

impl Client {
    /// `timeout` bounds every request, long polls included.
    pub fn new(base_url: &str, token: Option<String>, timeout: Duration) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build();
        Self {
            agent: config.into(),
            base: base_url.trim_end_matches('/').to_string(),
            token,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn auth(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    pub fn post<T: Serialize>(&self, path: &str, body: &T) -> Sent {
        let mut req = self.agent.post(self.url(path));
        if let Some(a) = self.auth() {
            req = req.header("Authorization", a);
        }
        classify(req.send_json(body))
    }

    pub fn get(&self, path: &str) -> Sent {
        let mut req = self.agent.get(self.url(path));
        if let Some(a) = self.auth() {
            req = req.header("Authorization", a);
        }
        classify(req.call())
    }

    /// `POST /api/v1/runs`: register a run and return its id. Called once, before training;
    /// retried for `patience` while the server is unreachable (it may still be starting).
    pub fn create_run(&self, spec: &RunSpec, patience: Duration) -> Result<i64> {
        let give_up = std::time::Instant::now() + patience;
        loop {
            match self.post("/api/v1/runs", spec) {
                Sent::Ok(mut body) => return Ok(body.read_json::<CreatedRun>()?.id),
                Sent::Refused(code, why) => bail!("the server refused the run ({code}): {why}"),
                Sent::Retry(why, _) if std::time::Instant::now() >= give_up => {
                    bail!("cannot reach the keel server at {}: {why}", self.base)
                }
                Sent::Retry(_, after) => {
                    std::thread::sleep(after.unwrap_or(Duration::from_millis(500)))
                }
            }
        }
    }

    /// One long poll for commands not yet applied or rejected, with ids above `after`.
    pub fn pending_commands(
        &self,
        run_id: i64,
        after: i64,
        wait_ms: u64,
    ) -> Result<Vec<CommandRecord>, String> {
        let path =
            format!("/api/v1/runs/{run_id}/commands/pending?after={after}&wait_ms={wait_ms}");
        match self.get(&path) {
            Sent::Ok(mut body) => body.read_json().map_err(|e| e.to_string()),
            Sent::Retry(why, _) => Err(why),
            Sent::Refused(code, why) => Err(format!("{code}: {why}")),
        }
    }
}

fn classify(res: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Sent {
    match res {
        Ok(resp) => {
            let code = resp.status().as_u16();
            let after = retry_after(resp.headers());
            let mut body = resp.into_body();
            match code {
                200..=299 => Sent::Ok(body),
                400..=499 => Sent::Refused(code, body.read_to_string().unwrap_or_default()),
                _ => Sent::Retry(format!("HTTP {code}"), after),
            }
        }
        Err(e) => Sent::Retry(e.to_string(), None),
    }
}

/// The wait a busy server asks for in `Retry-After` (whole seconds; at most a minute).
fn retry_after(headers: &ureq::http::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_server_says_how_long_to_wait_in_whole_seconds_capped_at_a_minute() {
        let mut h = ureq::http::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        for (value, want) in [
            ("1", Some(1)),
            (" 3 ", Some(3)),
            ("600", Some(60)),
            ("soon", None),
        ] {
            h.insert("retry-after", value.parse().unwrap());
            assert_eq!(retry_after(&h), want.map(Duration::from_secs), "{value}");
        }
    }
}
