// A page's live stream: one run's events (`run` = its id) or every run's summaries
// (`run` = "all"), through the browser's shared live connection (`live-worker.js`) when the
// browser has SharedWorker, else through an EventSource of the page's own.
//
// `on` maps event names to handlers of the parsed data; `state` gets "live", "reconnecting"
// or "closed".

export function follow(run, on, state) {
  const deliver = (name, data) => on[name]?.(JSON.parse(data));
  if (typeof SharedWorker === "function") {
    try {
      const worker = new SharedWorker("/static/live-worker.js", { name: "keel-live" });
      worker.port.onmessage = (m) => {
        if (m.data.type === "state") state(m.data.state);
        else deliver(m.data.name, m.data.data);
      };
      worker.port.start();
      worker.port.postMessage({ op: "sub", run });
      window.addEventListener("pagehide", () => worker.port.postMessage({ op: "unsub" }));
      // Back from the back-forward cache: follow again (the hello that comes reloads).
      window.addEventListener("pageshow", (e) => {
        if (e.persisted) worker.port.postMessage({ op: "sub", run });
      });
      return;
    } catch {
      // Fall through: a page of its own connection.
    }
  }
  const es = new EventSource(run === "all" ? "/api/v1/live" : `/api/v1/runs/${run}/live`);
  es.onopen = () => state("live");
  es.onerror = () => state(es.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
  for (const name of Object.keys(on)) es.addEventListener(name, (ev) => deliver(name, ev.data));
}
