//! Notifications: incidents as they open and rule firings, posted as JSON to webhooks
//! (`keel serve --webhook URL`, and a run's own `config.alerts.webhooks`).
//!
//! The body is what Slack-compatible receivers take — `{"text": …}` — with the structured
//! notice beside it under `"keel"`. Nothing secret goes in it: no token, no webhook URL, no
//! run config. Delivery runs on its own thread, one notice at a time, retried with backoff
//! (1, 2, 4, 8, 16 s) while the receiver fails or refuses; ingest never waits for it, and a
//! backlog past [`BACKLOG`] notices drops the newest with a log line.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use keel_protocol::{EventRecord, Incident};
use serde::Serialize;
use tokio::sync::mpsc;

/// Notices waiting for delivery, at most.
pub const BACKLOG: usize = 1_000;
/// Tries per notice and webhook, the first included.
const TRIES: u32 = 6;

/// Something worth telling a person: what it is, and the run it is about.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    /// An incident opened (its first alert).
    Incident { run: RunRef, incident: Incident },
    /// A rule fired (the `rule` event says what it issued).
    Rule { run: RunRef, event: EventRecord },
}

/// The run a notice is about, and where its own webhooks are (never sent).
#[derive(Clone, Debug, Serialize)]
pub struct RunRef {
    pub id: i64,
    pub name: String,
    /// The run's page, when the server knows its own address.
    pub url: Option<String>,
    #[serde(skip)]
    pub webhooks: Vec<String>,
}

impl Notice {
    fn run(&self) -> &RunRef {
        match self {
            Notice::Incident { run, .. } | Notice::Rule { run, .. } => run,
        }
    }

    /// One line a person reads in a chat channel.
    pub fn text(&self) -> String {
        let run = self.run();
        let link = run
            .url
            .as_deref()
            .map_or(String::new(), |u| format!(" — {u}"));
        match self {
            Notice::Incident { incident: i, .. } => format!(
                "keel: {} {} on run {} ({}) at step {}: {}{link}",
                match i.severity {
                    keel_protocol::Severity::Critical => "CRITICAL",
                    keel_protocol::Severity::Warning => "warning",
                    keel_protocol::Severity::Info => "info",
                },
                i.name,
                run.id,
                run.name,
                i.start_step,
                i.peak_message
            ),
            Notice::Rule { event: e, .. } => format!(
                "keel: run {} ({}){}: {}{link}",
                run.id,
                run.name,
                e.step.map_or(String::new(), |s| format!(" at step {s}")),
                e.message
            ),
        }
    }

    /// The JSON body posted.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"text": self.text(), "keel": self})
    }
}

/// The sending end: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::UnboundedSender<Notice>,
    queued: Arc<AtomicUsize>,
    /// Whether any webhook exists beyond the runs' own (else runs without one cost nothing).
    global: bool,
}

impl Notifier {
    /// Starts the delivery thread for `global` webhooks (besides each run's own); `base_url`
    /// makes the runs' page links. `backoff` is the first retry's delay, doubled each time.
    pub fn spawn(global: Vec<String>, base_url: Option<String>, backoff: Duration) -> Notifier {
        let (tx, mut rx) = mpsc::unbounded_channel::<Notice>();
        let queued = Arc::new(AtomicUsize::new(0));
        let notifier = Notifier {
            tx,
            queued: queued.clone(),
            global: !global.is_empty(),
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .into();
        std::thread::Builder::new()
            .name("keel-webhooks".into())
            .spawn(move || {
                while let Some(mut notice) = rx.blocking_recv() {
                    queued.fetch_sub(1, Ordering::SeqCst);
                    if let (Notice::Incident { run, .. } | Notice::Rule { run, .. }, Some(base)) =
                        (&mut notice, &base_url)
                    {
                        run.url = Some(format!("{base}/runs/{}", run.id));
                    }
                    let body = notice.body().to_string();
                    for url in global.iter().chain(&notice.run().webhooks) {
                        deliver(&agent, url, &body, backoff);
                    }
                }
            })
            .expect("starting the webhook thread");
        notifier
    }

    /// Queues a notice for delivery, unless nobody is listening or the backlog is full.
    pub fn send(&self, notice: Notice) {
        if !self.global && notice.run().webhooks.is_empty() {
            return;
        }
        if self.queued.fetch_add(1, Ordering::SeqCst) >= BACKLOG {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("{BACKLOG} notices wait for their webhooks already; one is dropped");
            return;
        }
        if self.tx.send(notice).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Posts `body` to `url`, retrying with doubling delays while it fails; says in the log how
/// it went (the URL is a secret: only its host is named).
fn deliver(agent: &ureq::Agent, url: &str, body: &str, backoff: Duration) {
    let host = host_of(url);
    let mut delay = backoff;
    for attempt in 1..=TRIES {
        let outcome = agent
            .post(url)
            .header("content-type", "application/json")
            .send(body);
        let why = match outcome {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => format!("answered {}", r.status().as_u16()),
            Err(e) => e.to_string(),
        };
        if attempt == TRIES {
            tracing::warn!(%host, "a webhook failed {TRIES} times ({why}); the notice is dropped");
            return;
        }
        tracing::info!(%host, attempt, "a webhook failed ({why}); retrying in {delay:?}");
        std::thread::sleep(delay);
        delay *= 2;
    }
}

/// The host of a URL, for logs: `https://hooks.example.com/T0/B0/secret` → `hooks.example.com`.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?', '#']).next().unwrap_or(rest)
}

/// A run's own webhooks: `config.alerts.webhooks`, a list of URLs (anything else: none).
pub fn of_config(config: &serde_json::Value) -> Vec<String> {
    config
        .pointer("/alerts/webhooks")
        .and_then(|w| w.as_array())
        .map(|urls| {
            urls.iter()
                .filter_map(|u| u.as_str())
                .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_logged_by_its_host_only() {
        assert_eq!(
            host_of("https://hooks.example.com/T0/B0/secret"),
            "hooks.example.com"
        );
        assert_eq!(host_of("http://127.0.0.1:9/x?y"), "127.0.0.1:9");
    }

    #[test]
    fn a_runs_webhooks_come_from_its_config() {
        let config = serde_json::json!({"alerts": {"webhooks": ["https://a/b", "ftp://c", 3]}});
        assert_eq!(of_config(&config), vec!["https://a/b".to_string()]);
        assert!(of_config(&serde_json::json!({})).is_empty());
    }
}
