// The runs page: the table comes rendered from the server; this keeps it current from
// /api/v1/live, which sends per-run step summaries (throttled by the server), status changes,
// alerts and launch changes. On every (re)connection the server says `hello` and the table
// (and the launches) are refetched, since whatever happened while disconnected is in them.

import { age, connState, count, metric, num, tokens } from "./keel.js";
import { LaunchPanel } from "./launches.js";
import { follow } from "./live.js";

const launches = LaunchPanel.find();

const body = document.getElementById("runs-body");
const row = (id) => body.querySelector(`tr[data-run="${id}"]`);
const cell = (tr, field) => tr.querySelector(`[data-field="${field}"]`);

// Runs ticked for comparison, kept across table refetches.
const picked = new Set();
const compareButton = document.getElementById("compare-selected");

function syncPicks() {
  for (const box of body.querySelectorAll("input[data-pick]")) box.checked = picked.has(box.dataset.pick);
  compareButton.disabled = picked.size < 1;
  compareButton.textContent = picked.size ? `Compare selected (${picked.size})` : "Compare selected";
}

body.addEventListener("change", (e) => {
  const box = e.target.closest("input[data-pick]");
  if (!box) return;
  if (box.checked) picked.add(box.dataset.pick);
  else picked.delete(box.dataset.pick);
  syncPicks();
});
compareButton.addEventListener("click", () => {
  if (picked.size) window.location.href = `/compare?runs=${[...picked].join(",")}`;
});

async function refresh() {
  // A page of older runs (`/?before=ID`) refetches that same page.
  const r = await fetch(`/runs/table${window.location.search}`);
  if (r.ok) {
    body.innerHTML = await r.text();
    syncPicks();
  }
}

function onRuns(runs) {
  for (const run of runs) {
    const tr = row(run.id);
    if (!tr) {
      // A run this page has not seen yet: new ones belong on the newest page only.
      if (!new URLSearchParams(window.location.search).has("before")) return refresh();
      continue;
    }
    cell(tr, "step").textContent = count(run.last_step);
    if (run.loss != null) {
      const loss = num(run.loss);
      const c = cell(tr, "loss");
      c.textContent = metric(loss);
      c.classList.toggle("bad", !Number.isFinite(loss));
    }
    if (run.tokens != null) cell(tr, "tokens").textContent = tokens(run.tokens);
    tr.dataset.updated = String(Date.now() / 1000);
    cell(tr, "age").textContent = "0 s ago";
  }
}

function onStatus(msg) {
  const tr = row(msg.id);
  if (!tr) return refresh();
  const c = cell(tr, "status");
  c.textContent = msg.status;
  c.dataset.status = msg.status;
  tr.dataset.updated = String(Date.now() / 1000);
}

function onAlert(msg) {
  const tr = row(msg.event.run_id);
  if (!tr) return refresh();
  const badge = cell(tr, "alerts");
  badge.textContent = String(Number(badge.textContent) + 1);
  badge.classList.add("hot");
  // An alert may open an incident: the server counts them; ask it, once the burst is over.
  clearTimeout(onAlert.later);
  onAlert.later = setTimeout(refresh, 1000);
}

function tickAges() {
  const now = Date.now() / 1000;
  for (const tr of body.querySelectorAll("tr[data-run]")) {
    cell(tr, "age").textContent = `${age(now, Number(tr.dataset.updated))} ago`;
  }
}

function refreshAll() {
  refresh();
  launches?.refresh();
}

const handlers = {
  runs: (m) => onRuns(m.runs),
  status: onStatus,
  alert: onAlert,
  launch: (m) => launches?.update(m.launch),
  resync: refreshAll,
};
follow("all", { hello: refreshAll, ...handlers }, connState);
setInterval(tickAges, 1000);
