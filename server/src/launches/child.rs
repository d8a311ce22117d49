//! One trainer process, from start to exit.
//!
//! The process gets the operator token in its environment (never on its command line, which
//! any user of the machine can read), no stdin, and a process group of its own: a Ctrl-C in
//! the server's terminal does not reach it, and a stop reaches everything it started. Its
//! stdout is read and dropped and its stderr read line by line, keeping the last few lines for
//! the failure reason, so that a chatty trainer never blocks on a full pipe. A stop is SIGTERM
//! (the trainer checkpoints and exits at its next step boundary), then SIGKILL after a grace
//! period.

use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// Lines of stderr kept for a failed variant.
const TAIL_LINES: usize = 20;
/// Longest stderr line kept, in characters.
const TAIL_WIDTH: usize = 400;

/// How a process ended.
#[derive(Debug)]
pub struct Ended {
    pub success: bool,
    /// `exit code 0`, `killed by signal 9`, `could not start: …`.
    pub exit: String,
    /// The last lines of its stderr.
    pub stderr: Vec<String>,
}

impl Ended {
    pub fn not_started(e: std::io::Error) -> Ended {
        Ended {
            success: false,
            exit: format!("could not start: {e}"),
            stderr: Vec::new(),
        }
    }
}

/// Starts `cmd` with the token in its environment and its output piped to us.
pub fn spawn(cmd: std::process::Command, token: &str) -> std::io::Result<Child> {
    let mut cmd = Command::from(cmd);
    cmd.env("KEEL_TOKEN", token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // The last resort: a process whose supervisor is dropped (the runtime going away
        // without a shutdown) is killed rather than left behind.
        .kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);
    cmd.spawn()
}

/// Waits for `child` to exit, stopping it when `stop` fires: SIGTERM to its process group,
/// SIGKILL when it has not exited after `grace`.
pub async fn supervise(mut child: Child, stop: CancellationToken, grace: Duration) -> Ended {
    let pid = child.id();
    if let Some(out) = child.stdout.take() {
        tokio::spawn(drain(out));
    }
    let tail = child.stderr.take().map(|err| tokio::spawn(tail(err)));
    let status = tokio::select! {
        status = child.wait() => status,
        () = stop.cancelled() => {
            signal(pid, Signal::Term);
            match tokio::time::timeout(grace, child.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    tracing::warn!(?pid, "a trainer did not stop within {grace:?}; killing it");
                    signal(pid, Signal::Kill);
                    let _ = child.start_kill();
                    child.wait().await
                }
            }
        }
    };
    // Whatever the process started may still hold the pipe open: do not wait on it for long.
    let stderr = match tail {
        Some(t) => tokio::time::timeout(Duration::from_secs(1), t)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default(),
        None => Vec::new(),
    };
    match status {
        Ok(status) => Ended {
            success: status.success(),
            exit: describe(status),
            stderr,
        },
        Err(e) => Ended {
            success: false,
            exit: format!("waiting for the process failed: {e}"),
            stderr,
        },
    }
}

async fn drain(mut out: impl AsyncRead + Unpin) {
    let _ = tokio::io::copy(&mut out, &mut tokio::io::sink()).await;
}

/// Reads `err` to its end and returns its last [`TAIL_LINES`] lines, colour codes removed.
/// A backtrace (with `RUST_BACKTRACE` set, after an error or a panic) is read but not kept:
/// the lines before it say what went wrong.
pub(super) async fn tail(err: impl AsyncRead + Unpin) -> Vec<String> {
    let mut reader = BufReader::new(err);
    let mut lines = VecDeque::with_capacity(TAIL_LINES);
    let mut buf = Vec::new();
    let mut in_backtrace = false;
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = plain(&String::from_utf8_lossy(&buf));
        if line.eq_ignore_ascii_case("stack backtrace:") {
            in_backtrace = true;
        } else if !line.starts_with(' ') {
            // Backtrace frames are indented; the next line that is not ends it.
            in_backtrace = false;
        }
        if in_backtrace || line.trim().is_empty() {
            continue;
        }
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }
    lines.into()
}

/// A line without terminal escape sequences (the trainer's log is coloured), trailing
/// whitespace or more than [`TAIL_WIDTH`] characters.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters… final byte in @..~
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else if !c.is_control() || c == '\t' {
            out.push(c);
        }
    }
    let trimmed = out.trim_end();
    match trimmed.char_indices().nth(TAIL_WIDTH) {
        Some((at, _)) => format!("{}…", &trimmed[..at]),
        None => trimmed.to_owned(),
    }
}

fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("killed by signal {sig}");
        }
    }
    status.to_string()
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Signal {
    Term,
    Kill,
}

/// Sends `sig` to the process group `pid` leads. The process is not yet reaped (we hold its
/// `Child` and have not seen it exit), so the id cannot have been given to another process.
#[cfg(unix)]
pub(super) fn signal(pid: Option<u32>, sig: Signal) {
    use nix::sys::signal::{Signal as S, killpg};
    use nix::unistd::Pid;
    let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) else {
        return;
    };
    let sig = match sig {
        Signal::Term => S::SIGTERM,
        Signal::Kill => S::SIGKILL,
    };
    // ESRCH only means it is gone already.
    if let Err(e) = killpg(Pid::from_raw(pid), sig) {
        tracing::debug!(pid, ?sig, "signal not sent: {e}");
    }
}

/// Elsewhere there is no graceful stop: the grace period passes, then the process is killed.
#[cfg(not(unix))]
pub(super) fn signal(_pid: Option<u32>, _sig: Signal) {}

/// Whether process `pid` is alive and is the trainer of `variant` in `group` (its command line
/// says so): a trainer a previous server started, to adopt. On Linux only (`/proc`).
pub(super) fn is_trainer(pid: u32, variant: &str, group: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let after = |flag: &str| {
        args.windows(2)
            .any(|w| w[0] == flag.as_bytes() && w[1] == variant.as_bytes())
    };
    let grouped = args
        .windows(2)
        .any(|w| w[0] == b"--group" && w[1] == group.as_bytes());
    after("--variant") && grouped && is_alive(pid)
}

/// Whether a process `pid` exists (a zombie is gone: it only waits to be reaped).
pub(super) fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses: `Z` is a zombie.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Follows an adopted trainer (not our child: it cannot be waited for) until it exits, and
/// stops it like a child when `stop` is cancelled: SIGTERM, then SIGKILL after `grace`.
pub(super) async fn follow_adopted(pid: u32, stop: CancellationToken, grace: Duration) {
    let every = Duration::from_millis(250);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(every) => {
                if !is_alive(pid) {
                    return;
                }
            }
        }
    }
    signal(Some(pid), Signal::Term);
    let deadline = tokio::time::Instant::now() + grace;
    while is_alive(pid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(every).await;
    }
    if is_alive(pid) {
        tracing::warn!(
            pid,
            "an adopted trainer did not stop within {grace:?}; killing it"
        );
        signal(Some(pid), Signal::Kill);
    }
    while is_alive(pid) {
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_lines_lose_colour_codes_and_length() {
        let line = "\u{1b}[2m2026-01-01\u{1b}[0m \u{1b}[31mERROR\u{1b}[0m no server\r\n";
        assert_eq!(plain(line), "2026-01-01 ERROR no server");
        let long = "x".repeat(TAIL_WIDTH + 10);
        assert_eq!(plain(&long).chars().count(), TAIL_WIDTH + 1);
    }

    #[tokio::test]
    async fn backtraces_are_left_out_of_the_stderr_tail() {
        let text = "Error: data source `web`: no file matches data/web-*.jsonl\n\n\
                    Stack backtrace:\n   0: anyhow::error::<impl anyhow::Error>::msg\n\
                    \x20            at src/error.rs:83:36\n   1: main\n";
        let lines = tail(text.as_bytes()).await;
        assert_eq!(
            lines,
            ["Error: data source `web`: no file matches data/web-*.jsonl"]
        );
        let panic = "thread 'main' panicked at src/x.rs:1:1:\nboom\nstack backtrace:\n   0: f\nnote: run with `RUST_BACKTRACE=full`\n";
        let lines = tail(panic.as_bytes()).await;
        assert_eq!(
            lines,
            [
                "thread 'main' panicked at src/x.rs:1:1:",
                "boom",
                "note: run with `RUST_BACKTRACE=full`"
            ]
        );
    }

    #[tokio::test]
    async fn only_the_last_lines_of_stderr_are_kept() {
        let text: String = (0..50).map(|i| format!("line {i}\n")).collect();
        let lines = tail(text.as_bytes()).await;
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[0], "line 30");
        assert_eq!(lines[TAIL_LINES - 1], "line 49");
    }
}
