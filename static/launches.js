// The launch panel of the runs page: pick a grid of the server's grids folder and launch it,
// then follow every launch — each variant queued, running (with a link to its run once it has
// one), finished, failed (with the trainer's last words) or cancelled; under SLURM with its
// job id and the scheduler's word.
//
// The launches come from GET /api/v1/launches on every (re)connection of the page's live
// stream and then from its `launch` events, each the whole record. A record also arrives in
// the reply to a launch or a cancel, in either order with the events, so a record never
// replaces one that is further along. The CSRF token comes from the page's <meta> tag: a page
// without it shows the launches but offers neither the form nor the cancel buttons.

import { getJSON } from "./keel.js";

// How far along a variant is; a record's progress is the sum over its variants.
const RANK = { queued: 0, running: 1, finished: 3, failed: 3, cancelled: 3 };
const SHOWN = 20;

function progress(l) {
  let p = l.cancelled ? 1 : 0;
  for (const v of l.variants) {
    p += 4 * RANK[v.state] + (v.run_id != null ? 2 : 0) + (v.cancelled ? 1 : 0);
  }
  return p;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  e.append(...children.filter((c) => c != null));
  return e;
}

export class LaunchPanel {
  // The panel on this page, or null when the server does not launch grids.
  static find() {
    const root = document.getElementById("launch");
    return root ? new LaunchPanel(root) : null;
  }

  constructor(root) {
    this.list = root.querySelector("#launches");
    this.csrf = document.querySelector('meta[name="csrf-token"]')?.content ?? null;
    this.byId = new Map();
    this.grids = new Map();
    this.form = root.querySelector("#launch-form");
    this.hint = root.querySelector("#launch-variants");
    this.list.addEventListener("click", (e) => {
      const b = e.target.closest("button[data-cancel]");
      if (b) this.cancel(b);
      const one = e.target.closest("button[data-cancel-variant]");
      if (one) this.cancelVariant(one);
    });
    if (this.form && this.csrf) this.wireForm();
  }

  wireForm() {
    this.select = this.form.elements.grid;
    this.submit = this.form.querySelector("button[type=submit]");
    this.select.addEventListener("change", () => this.showGrid());
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.launch();
    });
    this.loadGrids();
  }

  async loadGrids() {
    const out = this.form.querySelector("output.err");
    try {
      const grids = await getJSON("/api/v1/grids");
      this.grids = new Map(grids.map((g) => [g.name, g]));
      const options = grids.map((g) => {
        const label = g.error ? `${g.name} (does not load)` : `${g.name} (${g.variants.length} variants)`;
        return el("option", { value: g.name, text: label });
      });
      if (!options.length) {
        options.push(el("option", { value: "", text: `no grids (${this.hint.dataset.grids})` }));
      }
      this.select.replaceChildren(...options);
      const first = grids.find((g) => !g.error);
      if (first) this.select.value = first.name;
      this.showGrid();
    } catch (e) {
      out.textContent = `could not read the grids (${e.message})`;
    }
  }

  // Shows the chosen grid's variants (or why it does not load) and enables Launch for it.
  showGrid() {
    const g = this.grids.get(this.select.value);
    this.submit.disabled = !g || !!g.error;
    this.hint.classList.toggle("bad", !!g?.error);
    if (!g) this.hint.textContent = "";
    else if (g.error) this.hint.textContent = `${g.name} does not load: ${g.error}`;
    else this.hint.textContent = `Variants: ${g.variants.join(", ")}`;
  }

  async launch() {
    const out = this.form.querySelector("output.err");
    out.textContent = "";
    const steps = this.form.elements.steps.value.trim();
    const body = { grid: this.select.value };
    if (steps !== "") body.steps = Number(steps);
    this.submit.disabled = true;
    try {
      const reply = await this.post("/api/v1/launches", body);
      if (reply.ok) this.update(reply.body);
      else out.textContent = reply.error;
    } finally {
      this.showGrid();
    }
  }

  async cancel(button) {
    const l = this.byId.get(Number(button.dataset.cancel));
    if (!l || !window.confirm(`Cancel ${l.grid} (${l.group})? Running trainers stop at their next step.`)) return;
    button.disabled = true;
    const reply = await this.post(`/api/v1/launches/${l.id}/cancel`);
    if (reply.ok) this.update(reply.body);
    else {
      button.disabled = false;
      window.alert(reply.error);
    }
  }

  async cancelVariant(button) {
    const l = this.byId.get(Number(button.closest("li[data-launch]").dataset.launch));
    const name = button.dataset.cancelVariant;
    if (!l || !window.confirm(`Cancel variant ${name} of ${l.group}? Its trainer stops at its next step.`)) return;
    button.disabled = true;
    const reply = await this.post(`/api/v1/launches/${l.id}/variants/${encodeURIComponent(name)}/cancel`);
    if (reply.ok) this.update(reply.body);
    else {
      button.disabled = false;
      window.alert(reply.error);
    }
  }

  // A POST with the CSRF token: {ok, body} or {ok: false, error}.
  async post(url, body) {
    try {
      const r = await fetch(url, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": this.csrf },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const reply = await r.json().catch(() => ({}));
      if (r.ok) return { ok: true, body: reply };
      const again = r.status === 401 ? " — sign in again" : "";
      return { ok: false, error: (reply.error ?? `refused (${r.status})`) + again };
    } catch (e) {
      return { ok: false, error: `could not reach the server (${e.message})` };
    }
  }

  // Rereads every launch (on connecting, and when the live stream lost messages).
  async refresh() {
    try {
      const list = await getJSON("/api/v1/launches");
      this.byId = new Map(list.map((l) => [l.id, l]));
      this.render();
    } catch {
      // The next connection tries again.
    }
  }

  update(l) {
    const old = this.byId.get(l.id);
    if (old && progress(old) > progress(l)) return;
    this.byId.set(l.id, l);
    this.render();
  }

  render() {
    const launches = [...this.byId.values()].sort((a, b) => b.id - a.id).slice(0, SHOWN);
    this.list.replaceChildren(...launches.map((l) => this.item(l)));
  }

  item(l) {
    const done = l.variants.filter((v) => RANK[v.state] === 3).length;
    const steps = l.steps == null ? "the grid's steps" : `${l.steps.toLocaleString("en-US")} steps`;
    const hasRuns = l.variants.some((v) => v.run_id != null);
    const compare = hasRuns
      ? el("a", { href: `/compare?group=${encodeURIComponent(l.group)}`, title: "compare the runs of this launch", text: "compare" })
      : null;
    const cancel = this.csrf && l.active
      ? el("button", { type: "button", class: "mini danger", "data-cancel": String(l.id), text: l.cancelled ? "Cancelling…" : "Cancel" })
      : null;
    if (cancel && l.cancelled) cancel.disabled = true;
    const line = el("div", { class: "launch-line" },
      el("b", { text: l.grid }),
      el("span", { class: "muted", text: l.group }),
      el("span", { class: "muted", text: `${steps} · ${done} of ${l.variants.length} done` }),
      compare,
      cancel,
    );
    const variants = el("ul", { class: "launch-variants" }, ...l.variants.map((v) => variant(l, v, this.csrf)));
    return el("li", { class: "launch-item", "data-launch": String(l.id), "data-active": String(l.active) }, line, variants);
  }
}

function variant(l, v, csrf) {
  // A running variant of a cancelled launch, or one cancelled alone, is on its way out.
  const shown = v.state === "running" && (l.cancelled || v.cancelled) ? "stopping" : v.state;
  const name = v.run_id != null
    ? el("a", { href: `/runs/${v.run_id}`, text: v.name })
    : el("span", { text: v.name });
  let why = null;
  if (v.state === "failed") {
    const last = v.stderr.length ? v.stderr[v.stderr.length - 1] : "";
    why = el("details", { class: "why" },
      el("summary", { text: last ? `${v.exit}: ${last}` : v.exit ?? "failed" }),
      v.stderr.length ? el("pre", { text: v.stderr.join("\n") }) : null,
    );
  }
  return el("li", { "data-variant": v.name, "data-state": v.state },
    el("span", { class: "status", "data-status": shown, text: shown }),
    name,
    job(v),
    why,
    cancelOne(l, v, csrf),
  );
}

// The button that cancels this variant alone, while it is queued or running.
function cancelOne(l, v, csrf) {
  if (!csrf || l.cancelled || RANK[v.state] === 3) return null;
  const b = el("button", {
    type: "button",
    class: "mini",
    "data-cancel-variant": v.name,
    title: `cancel ${v.name} alone`,
    text: v.cancelled ? "cancelling…" : "cancel",
  });
  b.disabled = v.cancelled;
  return b;
}

// A SLURM variant's job: its id, and where it is (the scheduler's reason while it waits, its
// node while it runs); the output file in its tooltip.
function job(v) {
  if (v.job == null) return null;
  let where = "";
  if (v.state === "queued") where = v.reason ? ` · ${v.reason}` : "";
  else if (v.node) where = ` on ${v.node}`;
  if (v.state === "failed" && v.reason) where += ` · ${v.reason}`;
  const attrs = { class: "muted job", "data-job": v.job, text: `job ${v.job}${where}` };
  if (v.log) attrs.title = `output: ${v.log}`;
  return el("span", attrs);
}
