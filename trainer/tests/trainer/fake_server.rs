//! A minimal HTTP/1.1 server that plays the keel API for the link tests: it records every
//! request, answers ingest and outcome posts, and serves a queue of pending commands.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use keel_protocol::{Command, CommandRecord, CommandStatus};

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub auth: Option<String>,
    pub body: serde_json::Value,
}

#[derive(Default)]
pub struct State {
    pub requests: Vec<Request>,
    pub pending: Vec<CommandRecord>,
    /// Commands to queue once the outcome of the given command id arrives.
    pub after_outcome: Vec<(i64, CommandRecord)>,
}

pub struct FakeServer {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

pub fn command(id: i64, command: Command) -> CommandRecord {
    CommandRecord {
        id,
        run_id: 7,
        command,
        status: CommandStatus::Queued,
        applied_step: None,
        message: None,
        issued_by: "token".into(),
        created_at: 0.0,
        updated_at: 0.0,
    }
}

impl FakeServer {
    pub fn start(addr: &str) -> Self {
        let listener = TcpListener::bind(addr).expect("binding the fake server");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(conn) = conn {
                    let s = s.clone();
                    std::thread::spawn(move || serve(conn, &s));
                }
            }
        });
        Self { addr, state, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let (mut len, mut auth) = (0usize, None);
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        if h.trim().is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap();
        match k.to_ascii_lowercase().as_str() {
            "content-length" => len = v.trim().parse().unwrap(),
            "authorization" => auth = Some(v.trim().to_string()),
            _ => {}
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let req = Request {
        method,
        path,
        auth,
        body,
    };
    let (code, reply) = answer(&req, &mut state.lock().unwrap());
    state.lock().unwrap().requests.push(req);
    let text = format!(
        "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
        reply.len()
    );
    let _ = (&conn).write_all(text.as_bytes());
}

fn answer(req: &Request, st: &mut State) -> (u16, String) {
    let p = req.path.as_str();
    if req.method == "POST" && p == "/api/v1/runs" {
        return (201, r#"{"id": 7}"#.into());
    }
    if p.contains("/commands/pending") {
        return (200, serde_json::to_string(&st.pending).unwrap());
    }
    if let Some(rest) = p.strip_suffix("/outcome") {
        let id: i64 = rest.rsplit('/').next().unwrap().parse().unwrap();
        st.pending.retain(|c| c.id != id);
        let (now, later): (Vec<_>, Vec<_>) = st
            .after_outcome
            .drain(..)
            .partition(|(after, _)| *after == id);
        st.after_outcome = later;
        st.pending.extend(now.into_iter().map(|(_, c)| c));
        return (200, "{}".into());
    }
    if p.ends_with("/steps") {
        let n = req.body["steps"].as_array().map_or(0, Vec::len);
        return (
            200,
            format!(r#"{{"accepted": {n}, "duplicates": 0, "branch": 0}}"#),
        );
    }
    (200, "{}".into())
}
