// The run page: loads every chart at the resolution it draws, then follows the run live.
//
// Order matters: the live stream is opened first and the data fetched on its `hello`, so no
// step falls between the fetch and the stream; steps that arrive while fetching wait in a
// queue and are applied after it (a chart ignores steps it already has). On a reconnect the
// stream resumes from where it was and the server sends what was missed; `resync` (too much
// missed) or a new `hello` refetches everything. The stream is the browser's shared one
// (`live.js`): any number of open tabs hold one connection.

import { Commands } from "./commands.js";
import { Heatmap } from "./heatmap.js";
import { Incidents } from "./incidents.js";
import { follow as followLive } from "./live.js";
import { LineChart, tokensAt } from "./linechart.js";
import { Profile } from "./profile.js";
import { age, connState, count, getJSON, metric, num, throttle, tokens } from "./keel.js";

const root = document.getElementById("run");
const boot = JSON.parse(root.dataset.boot);
const id = boot.id;
const api = `/api/v1/runs/${id}`;

const state = {
  branch: boot.branch,
  loading: null,
  queue: [],
  tokens: { step: [], value: [] },
  xmode: "step",
  alerts: [],
  events: [],
  updatedAt: Date.now() / 1000,
  profile: { stat: boot.layer_stats[0], latest: true },
  first: new Map(),
  // What the abandoned stretches on the charts were fetched for.
  abandonedTag: null,
};

const charts = {};
for (const fig of document.querySelectorAll("figure.chart")) charts[fig.dataset.key] = new LineChart(fig);
// For inspection from the console (and the browser tests).
window.keelCharts = charts;
const chartFor = (key) =>
  key === "loss" || key.startsWith("loss/") ? charts.loss : key.startsWith("val/") ? charts.val : charts[key];

// The command log and, when signed in, the controls; applied commands are marked on the charts.
const commands = new Commands(api, (applied) => {
  for (const c of Object.values(charts)) c.commands = applied;
  drawCharts();
});

// Incidents: listed (and acknowledged) in their panel and the dock, one band each on the charts.
const incidents = new Incidents(api, (list) => {
  for (const c of Object.values(charts)) c.incidents = list;
  drawCharts();
});

const heatmaps = new Map();
const profile = new Profile(document.getElementById("profile"));

function addHeatmap(stat) {
  if (heatmaps.has(stat)) return heatmaps.get(stat);
  const h = new Heatmap(document.getElementById("heatmaps"), {
    // `rank_*` statistics of a distributed run have a row per rank: a straggler is a hot row.
    runId: id, stat, onPick: pick,
    ...(stat.startsWith("rank_") && boot.ranks ? { layers: boot.ranks, rows: "rank" } : { layers: boot.layers }),
  });
  h.reload = throttle(() => h.load().catch(report), 1000);
  heatmaps.set(stat, h);
  state.profile.stat ??= stat;
  return h;
}
boot.layer_stats.forEach(addHeatmap);

const decode = (s) => ({ step: s.step, min: s.min.map(num), max: s.max.map(num), mean: s.mean.map(num) });
const path = (key) => key.split("/").map(encodeURIComponent).join("/");
const report = (e) => console.warn("keel:", e);

async function loadScalar(key, width) {
  const s = await getJSON(`${api}/scalars/${path(key)}?points=${width}`);
  return [key, decode(s)];
}

// The stretches of history that rewinds abandoned on the way to the live branch: walking up
// from the live branch, each parent's steps after the step its child forked at.
function abandonedStretches(detail) {
  const byId = new Map((detail.branches ?? []).map((b) => [b.branch, b]));
  const out = [];
  let b = byId.get(detail.branch);
  while (b && b.parent != null && out.length < byId.size) {
    out.push({ branch: b.parent, fork: b.fork_step, from: b.fork_step == null ? 0 : b.fork_step + 1 });
    b = byId.get(b.parent);
  }
  return out;
}

// One abandoned stretch of one series; null when that branch has nothing there.
async function loadStretch(key, st, width) {
  try {
    const q = `branch=${st.branch}&from=${st.from}&points=${width}`;
    const s = decode(await getJSON(`${api}/scalars/${path(key)}?${q}`));
    return s.step.length ? { key, branch: st.branch, ...s } : null;
  } catch {
    return null;
  }
}

// Fetches the abandoned stretches of every charted series again only when the branches, the
// series or the chart width changed: what a rewind left behind does not move.
async function loadAbandoned(detail, keys) {
  const stretches = abandonedStretches(detail);
  const tag = JSON.stringify([stretches, keys, charts.loss?.width()]);
  if (tag === state.abandonedTag) return;
  const found = await Promise.all(
    stretches.flatMap((st) => keys.map((k) => loadStretch(k, st, chartFor(k).width()))),
  );
  state.abandonedTag = tag;
  const rewinds = stretches.map((st) => st.fork).filter((f) => f != null);
  for (const c of Object.values(charts)) {
    c.abandoned = found.filter((s) => s && chartFor(s.key) === c);
    c.rewinds = rewinds;
  }
}

async function loadScalars(detail) {
  const keys = detail.scalars
    .filter((k) => chartFor(k))
    .sort((a, b) => (a === "loss" ? -1 : b === "loss" ? 1 : a.localeCompare(b)));
  keys.forEach((k) => chartFor(k).ensure(k));
  const jobs = keys.map((k) => loadScalar(k, chartFor(k).width()));
  if (detail.scalars.includes("tokens")) jobs.push(loadScalar("tokens", charts.loss.width()));
  const [loaded] = await Promise.all([Promise.all(jobs), loadAbandoned(detail, keys)]);
  for (const [key, s] of loaded) {
    if (key === "tokens") state.tokens = { step: s.step, value: s.min };
    else chartFor(key).set(key, s);
  }
  document.querySelector('[data-x="tokens"]').disabled = !detail.scalars.includes("tokens");
  drawCharts();
}

async function loadEvents() {
  const events = await getJSON(`${api}/events?limit=10000`);
  state.events = events;
  state.alerts = events.filter((e) => e.kind === "alert" && e.step != null);
  renderEvents();
  markAlerts();
}

// The exact values of one step (a one-step window is one bucket).
async function stepValues(stat, step) {
  const m = await getJSON(`${api}/layers/${encodeURIComponent(stat)}?from=${step}&to=${step}&columns=1`);
  return m.step.length ? { step: m.step[0], values: m.max[0].map(num) } : null;
}

// Every profile request takes a ticket; an answer whose ticket is no longer the newest (the
// user picked another step meanwhile) is dropped.
let profileTicket = 0;

async function loadProfile(lastStep) {
  const ticket = ++profileTicket;
  const p = state.profile;
  const h = heatmaps.get(p.stat);
  if (!h || !h.data || !h.data.step.length) return profile.show(null);
  if (!state.first.has(p.stat)) state.first.set(p.stat, await stepValues(p.stat, h.data.step[0]));
  const at = await stepValues(p.stat, p.latest ? lastStep : p.step);
  if (ticket !== profileTicket) return;
  if (at) Object.assign(p, at);
  profile.show({ ...p, first: state.first.get(p.stat)?.values });
}

async function loadAll() {
  const detail = await getJSON(api);
  state.branch = detail.branch;
  header(detail);
  detail.layer_stats.forEach(addHeatmap);
  await Promise.all([
    loadScalars(detail),
    loadEvents(),
    commands.load(),
    incidents.load(),
    ...[...heatmaps.values()].map((h) => h.load()),
  ]);
  await loadProfile(detail.last_step);
}

// Loads everything, holding live messages until done; then applies them.
function reload() {
  if (state.loading) return state.loading;
  state.loading = loadAll()
    .catch(report)
    .finally(() => {
      state.loading = null;
      const queued = state.queue.splice(0);
      queued.forEach(apply);
    });
  return state.loading;
}

function header(d) {
  setText("last-step", count(d.last_step));
  const loss = d.last_loss == null ? null : num(d.last_loss);
  setText("last-loss", metric(loss));
  document.getElementById("last-loss").classList.toggle("bad", loss != null && !Number.isFinite(loss));
  if (d.tokens != null) setText("tokens", tokens(d.tokens));
  setText("alert-count", String(d.alerts));
  setText("dock-alerts", `alerts: ${d.alerts}`);
  setStatus(d.status);
  state.updatedAt = d.updated_at;
}

function setText(elId, text) {
  const el = document.getElementById(elId);
  if (el && el.textContent !== text) el.textContent = text;
}

function setStatus(status) {
  const el = document.getElementById("run-status");
  el.textContent = status;
  el.dataset.status = status;
}

function setXAxis(mode) {
  state.xmode = mode;
  for (const b of document.querySelectorAll("#x-axis button")) {
    b.setAttribute("aria-pressed", String(b.dataset.x === mode));
  }
  for (const c of Object.values(charts)) {
    c.toX = mode === "tokens" ? (s) => tokensAt(state.tokens, s) : (s) => s;
    c.xName = mode;
  }
  drawCharts();
}

const drawCharts = throttle(() => Object.values(charts).forEach((c) => c.draw()), 100);
const refetchScalars = throttle(() => getJSON(api).then(loadScalars).catch(report), 2000);

function applyStep(r) {
  for (const [k, v] of Object.entries(r.scalars)) chartFor(k)?.append(k, r.step, num(v));
  if (r.tokens != null && r.step > (state.tokens.step.at(-1) ?? -1)) {
    state.tokens.step.push(r.step);
    state.tokens.value.push(r.tokens);
  }
  for (const [stat, values] of Object.entries(r.layers)) {
    const h = heatmaps.get(stat);
    if (!h) addHeatmap(stat).reload();
    else if (h.append(r.step, values)) h.reload();
    const p = state.profile;
    if (p.latest && p.stat === stat) Object.assign(p, { step: r.step, values: values.map(num) });
  }
  setText("last-step", count(r.step));
  if ("loss" in r.scalars) {
    const loss = num(r.scalars.loss);
    setText("last-loss", metric(loss));
    document.getElementById("last-loss").classList.toggle("bad", !Number.isFinite(loss));
  }
  if (r.tokens != null) setText("tokens", tokens(r.tokens));
  // The browser's clock, not the trainer's: the two need not agree.
  state.updatedAt = Date.now() / 1000;
}

// One live message, once the page has loaded.
function apply(msg) {
  switch (msg.type) {
    case "steps":
      // A higher branch is a rewind: the live history changed under every chart, and the
      // branches with it (the reload fetches them with the run).
      if (msg.branch > state.branch) return reload();
      if (msg.branch < state.branch) return;
      msg.steps.forEach(applyStep);
      drawCharts();
      if (Object.values(charts).some((c) => c.crowded())) refetchScalars();
      if (state.profile.latest) drawProfile();
      return;
    case "event":
      return addEvent(msg.event);
    case "command":
      return commands.update(msg.command);
    case "status":
      return setStatus(msg.status);
    case "resync":
      return reload();
  }
}

const drawProfile = throttle(() => {
  const p = state.profile;
  profile.show({ ...p, first: state.first.get(p.stat)?.values });
}, 250);

async function pick(stat, step) {
  const ticket = ++profileTicket;
  const at = await stepValues(stat, step);
  if (!at || ticket !== profileTicket) return;
  Object.assign(state.profile, { stat, latest: false, ...at });
  document.getElementById("profile-latest").setAttribute("aria-pressed", "false");
  for (const h of heatmaps.values()) {
    h.picked = h.stat === stat ? at.step : null;
    h.draw();
  }
  const h = heatmaps.get(stat);
  if (!state.first.has(stat) && h.data?.step.length) state.first.set(stat, await stepValues(stat, h.data.step[0]));
  drawProfile();
}

function follow() {
  Object.assign(state.profile, { latest: true });
  document.getElementById("profile-latest").setAttribute("aria-pressed", "true");
  for (const h of heatmaps.values()) {
    h.picked = null;
    h.draw();
  }
  getJSON(api).then((d) => loadProfile(d.last_step)).catch(report);
}

function addEvent(e) {
  state.events.push(e);
  if (e.kind === "alert") {
    setText("alert-count", String(Number(document.getElementById("alert-count").textContent) + 1));
    setText("dock-alerts", `alerts: ${document.getElementById("alert-count").textContent}`);
    if (e.step != null) state.alerts.push(e);
    markAlerts();
    incidents.alerted();
  }
  renderEvents();
}

function markAlerts() {
  for (const c of Object.values(charts)) c.alerts = state.alerts;
  for (const h of heatmaps.values()) {
    h.alerts = state.alerts;
    if (h.data) h.draw();
  }
  drawCharts();
}

// Newest first; alerts stand out, command and status events are quieter.
function renderEvents() {
  const list = document.getElementById("events");
  const items = state.events.slice(-300).reverse().map((e) => {
    const li = document.createElement("li");
    li.className = `ev ev-${e.kind}`;
    li.dataset.severity = e.severity;
    const when = new Date(e.time * 1000).toLocaleTimeString([], { hour12: false });
    const step = e.step == null ? "" : `step ${count(e.step)}`;
    li.innerHTML = `<span class="sev"></span><b></b><span class="where"></span><span class="msg"></span>`;
    li.querySelector(".sev").textContent = e.kind === "alert" ? e.severity : e.kind;
    li.querySelector("b").textContent = e.name;
    li.querySelector(".where").textContent = [step, when].filter(Boolean).join(" · ");
    li.querySelector(".msg").textContent = e.message;
    return li;
  });
  if (!items.length) {
    const li = document.createElement("li");
    li.className = "muted";
    li.textContent = "No alerts or events yet.";
    items.push(li);
  }
  list.replaceChildren(...items);
}

function connect() {
  const on = { hello: () => reload() };
  for (const name of ["steps", "event", "command", "status", "resync"]) {
    on[name] = (msg) => {
      if (state.loading) state.queue.push(msg);
      else apply(msg);
    };
  }
  followLive(id, on, connState);
}

for (const b of document.querySelectorAll("#x-axis button")) {
  b.addEventListener("click", () => setXAxis(b.dataset.x));
}
document.getElementById("profile-latest").addEventListener("click", follow);
let resized = null;
window.addEventListener("resize", () => {
  clearTimeout(resized);
  resized = setTimeout(reload, 300);
});
setInterval(() => setText("age", `${age(Date.now() / 1000, state.updatedAt)} ago`), 1000);
connect();
