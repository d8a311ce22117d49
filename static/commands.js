// The operator side of the run page: the command log, which everyone sees, and on a page
// rendered for a signed-in session the controls that issue commands.
//
// A command's state arrives twice — in the reply to the POST and as a live `command` message —
// in either order, so a record never replaces one that is further along (queued → delivered →
// applied/rejected). The CSRF token comes from the page's <meta> tag; a page without it has no
// controls and sends nothing.

import { count, getJSON } from "./keel.js";

const RANK = { queued: 0, delivered: 1, applied: 2, rejected: 2 };

// What to ask before sending the commands that cannot be taken back.
const CONFIRM = {
  stop: () => "Stop this run? The trainer saves a checkpoint, then exits.",
  rewind: (c) =>
    `Rewind to ${c.to_step == null ? "the newest checkpoint" : `the checkpoint at step ${c.to_step}`} and skip ${c.skip_batches ?? 0} batches? ` +
    "The steps after it are kept as an abandoned branch.",
};

export class Commands {
  // `onChange(applied)` is called with [{step, label, by}] whenever the applied commands
  // change (`by`: who issued it, `rule:<n>` for a rule).
  constructor(api, onChange) {
    this.api = api;
    this.onChange = onChange;
    this.list = document.getElementById("commands");
    this.byId = new Map();
    this.csrf = document.querySelector('meta[name="csrf-token"]')?.content ?? null;
    // The controls below the charts, and the dock of the most used ones that stays in view.
    for (const id of ["controls", "dock"]) {
      const panel = document.getElementById(id);
      if (panel && this.csrf) wire(panel, (form, kind, button) => this.submit(form, kind, button));
    }
    this.latest = document.getElementById("dock-latest");
  }

  async load() {
    const list = await getJSON(`${this.api}/commands`);
    this.byId.clear();
    list.forEach((c) => this.byId.set(c.id, c));
    this.changed();
  }

  update(c) {
    const old = this.byId.get(c.id);
    if (old && RANK[old.status] > RANK[c.status]) return;
    this.byId.set(c.id, c);
    this.changed();
  }

  changed() {
    this.render();
    const applied = [...this.byId.values()]
      .filter((c) => c.status === "applied" && c.applied_step != null)
      .map((c) => ({ step: c.applied_step, label: describe(c.command), by: c.issued_by }));
    this.onChange(applied);
  }

  render() {
    const items = [...this.byId.values()].sort((a, b) => b.id - a.id).slice(0, 300).map(item);
    if (!items.length) {
      const li = document.createElement("li");
      li.className = "muted";
      li.textContent = "No commands yet.";
      items.push(li);
    }
    this.list.replaceChildren(...items);
    const newest = [...this.byId.values()].sort((a, b) => b.id - a.id)[0];
    if (this.latest && newest) {
      this.latest.textContent = `${describe(newest.command)}: ${stateText(newest)}`;
      this.latest.dataset.status = newest.status;
    }
  }

  async submit(form, kind, button) {
    const out = form.querySelector("output.err");
    out.textContent = "";
    let body;
    try {
      body = build(kind, form);
    } catch (e) {
      out.textContent = e.message;
      return;
    }
    if (CONFIRM[kind] && !window.confirm(CONFIRM[kind](body))) return;
    button.disabled = true;
    try {
      const r = await fetch(`${this.api}/commands`, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": this.csrf },
        body: JSON.stringify(body),
      });
      const reply = await r.json().catch(() => ({}));
      if (r.ok) this.update(reply);
      else out.textContent = (reply.error ?? `refused (${r.status})`) + (r.status === 401 ? " — sign in again" : "");
    } catch (e) {
      out.textContent = `could not reach the server (${e.message})`;
    } finally {
      button.disabled = false;
    }
  }
}

function wire(panel, submit) {
  for (const form of panel.querySelectorAll("form.control")) {
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      submit(form, form.dataset.kind, e.submitter ?? form.querySelector("button[type=submit]"));
    });
    for (const b of form.querySelectorAll("button[type=button][data-kind]")) {
      b.addEventListener("click", () => submit(form, b.dataset.kind, b));
    }
  }
}

// An optional number field: undefined (left out of the JSON) when empty.
function number(form, name) {
  const v = form.elements[name]?.value.trim() ?? "";
  return v === "" ? undefined : Number(v);
}

// "code=0.3, math=0.7" → {code: 0.3, math: 0.7}.
function parseMix(text) {
  const out = {};
  for (const part of text.split(",").map((p) => p.trim()).filter(Boolean)) {
    const [name, weight, rest] = part.split("=").map((s) => s.trim());
    if (!name || weight == null || weight === "" || rest != null) {
      throw new Error("write the mix as source=weight, source=weight");
    }
    out[name] = Number(weight);
  }
  return out;
}

// The command body a control's fields describe; the server judges the values.
function build(kind, form) {
  switch (kind) {
    case "set_lr":
      return { kind, [form.elements.mode.value]: number(form, "value") };
    case "set_grad_clip":
      return { kind, max_norm: number(form, "max_norm") };
    case "set_data_mix": {
      const weights = parseMix(form.elements.extra.value);
      for (const input of form.querySelectorAll("[data-source]")) {
        if (input.value.trim() !== "") weights[input.dataset.source] = Number(input.value);
      }
      if (!Object.keys(weights).length) throw new Error("give at least one source a weight");
      return { kind, weights };
    }
    case "anneal": {
      const mix = parseMix(form.elements.mix.value);
      return {
        kind, steps: number(form, "steps"), shape: form.elements.shape.value,
        final_lr: number(form, "final_lr"),
        data_mix: Object.keys(mix).length ? mix : undefined,
        seq_len: number(form, "seq_len"), rope_theta: number(form, "rope_theta"),
      };
    }
    case "rewind":
      return { kind, to_step: number(form, "to_step"), skip_batches: number(form, "skip_batches") ?? 0 };
    default:
      return { kind };
  }
}

// "set_lr lr=0.003", "anneal steps=2000 shape=1-sqrt …".
export function describe(c) {
  const args = Object.entries(c)
    .filter(([k]) => k !== "kind")
    .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`);
  return [c.kind, ...args].join(" ");
}

function stateText(c) {
  if (c.status === "applied") return c.applied_step == null ? "applied" : `applied at step ${count(c.applied_step)}`;
  if (c.status === "rejected") return `rejected: ${c.message ?? "no reason given"}`;
  return c.status;
}

function item(c) {
  const li = document.createElement("li");
  li.className = "cmd";
  li.dataset.id = c.id;
  li.dataset.status = c.status;
  li.innerHTML = `<span class="sev"></span><b></b><span class="where"></span><span class="msg"></span>`;
  li.querySelector(".sev").textContent = c.status;
  li.querySelector("b").textContent = describe(c.command);
  const when = new Date(c.created_at * 1000).toLocaleTimeString([], { hour12: false });
  li.querySelector(".where").textContent = `${c.issued_by} · ${when}`;
  li.querySelector(".msg").textContent = stateText(c);
  return li;
}
