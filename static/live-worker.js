// One live connection for every keel tab of this browser (a SharedWorker).
//
// Browsers open at most six HTTP/1.1 connections to one host, and each page's live stream
// holds one for as long as the page is open: with six run pages open, every other request of
// every tab stalled. Here, the run pages' streams go through one multiplexed stream,
// `/api/v1/live/runs?runs=1,2:12-4`, and the runs page's through one `/api/v1/live`: two
// connections however many tabs are open.
//
// The worker keeps each run's cursor (the event ids are `<run>:<cursor>`). When the set of
// runs changes, or the connection drops, it reconnects with every run's cursor, so the server
// sends each run exactly what it missed (or `resync`, when that is too much). A tab that joins
// a run already followed gets its own `hello` at once and reads from there.

const NAMES = ["hello", "steps", "event", "command", "status", "resync"];
const ALL_NAMES = ["hello", "runs", "status", "alert", "launch", "resync"];

const subs = new Map(); // port → run id, or "all"
const cursors = new Map(); // run id → cursor of the last event delivered
let runsSource = null, runsKey = "", retry = null;
let allSource = null;
let runsState = "reconnecting", allState = "reconnecting";

function followed() {
  return [...new Set([...subs.values()].filter((v) => v !== "all"))].sort((a, b) => a - b);
}

function post(port, msg) {
  try {
    port.postMessage(msg);
  } catch {
    subs.delete(port);
  }
}

function toRun(run, msg) {
  for (const [port, r] of subs) if (r === run) post(port, msg);
}

function toAll(msg) {
  for (const [port, r] of subs) if (r === "all") post(port, msg);
}

function openRuns() {
  clearTimeout(retry);
  const ids = followed();
  runsKey = ids.join(",");
  if (runsSource) runsSource.close();
  runsSource = null;
  if (!ids.length) return;
  const list = ids.map((id) => (cursors.has(id) ? `${id}:${cursors.get(id)}` : String(id))).join(",");
  const es = new EventSource(`/api/v1/live/runs?runs=${list}`);
  runsSource = es;
  es.onopen = () => {
    runsState = "live";
    for (const id of ids) toRun(id, { type: "state", state: "live" });
  };
  // The browser would resume with the last event id alone, which names one run: reconnect
  // ourselves, with every run's cursor.
  es.onerror = () => {
    if (runsSource !== es) return;
    es.close();
    runsSource = null;
    runsState = "reconnecting";
    for (const id of ids) toRun(id, { type: "state", state: "reconnecting" });
    retry = setTimeout(openRuns, 1000);
  };
  for (const name of NAMES) {
    es.addEventListener(name, (ev) => {
      const at = ev.lastEventId.indexOf(":");
      const run = Number(ev.lastEventId.slice(0, at));
      cursors.set(run, ev.lastEventId.slice(at + 1));
      toRun(run, { type: "event", name, data: ev.data });
    });
  }
}

function syncAll() {
  const wanted = [...subs.values()].includes("all");
  if (wanted && !allSource) {
    const es = new EventSource("/api/v1/live");
    allSource = es;
    es.onopen = () => {
      allState = "live";
      toAll({ type: "state", state: "live" });
    };
    es.onerror = () => {
      allState = es.readyState === EventSource.CLOSED ? "closed" : "reconnecting";
      toAll({ type: "state", state: allState });
    };
    for (const name of ALL_NAMES) es.addEventListener(name, (ev) => toAll({ type: "event", name, data: ev.data }));
  } else if (!wanted && allSource) {
    allSource.close();
    allSource = null;
  }
}

function subscribe(port, run) {
  subs.set(port, run);
  if (run === "all") {
    syncAll();
    // The runs page rereads everything on hello; a new tab needs its own.
    if (allSource && allState === "live") {
      post(port, { type: "state", state: "live" });
      post(port, { type: "event", name: "hello", data: "{}" });
    }
    return;
  }
  const key = followed().join(",");
  if (key !== runsKey || !runsSource) {
    // A run nobody follows starts afresh (with a hello from the server), not from an old cursor.
    if (!runsKey.split(",").includes(String(run))) cursors.delete(run);
    openRuns();
  } else if (runsState === "live") {
    post(port, { type: "state", state: "live" });
    post(port, { type: "event", name: "hello", data: "{}" });
  }
}

function unsubscribe(port) {
  const run = subs.get(port);
  subs.delete(port);
  if (run === "all") return syncAll();
  if (followed().join(",") !== runsKey) openRuns();
}

onconnect = (e) => {
  const port = e.ports[0];
  port.onmessage = (m) => {
    if (m.data.op === "sub") subscribe(port, m.data.run);
    else if (m.data.op === "unsub") unsubscribe(port);
  };
  port.start();
};
