// Incidents and alert settings on the run page.
//
// Incidents (consecutive alerts of one kind, from the server) are listed in their panel and,
// while open, in the dock that stays in view, each with an Acknowledge button for a signed-in
// operator; the charts draw each as one shaded band. The settings panel edits the run's alert
// thresholds and rules as JSON (PUT, audited by the server, in force from the next step).
// Everything that writes needs the page's CSRF token: a page without it only shows.

import { count, getJSON } from "./keel.js";

export class Incidents {
  // `onChange(incidents)` is called with the list whenever it changes.
  constructor(api, onChange) {
    this.api = api;
    this.onChange = onChange;
    this.list = [];
    this.csrf = document.querySelector('meta[name="csrf-token"]')?.content ?? null;
    this.panel = document.getElementById("incidents-list");
    this.dock = document.getElementById("dock-incidents");
    for (const el of [this.panel, this.dock]) {
      el?.addEventListener("click", (e) => {
        const b = e.target.closest("button[data-ack]");
        if (b) this.ack(Number(b.dataset.ack), b);
      });
    }
    for (const which of ["thresholds", "rules"]) this.editor(which);
  }

  async load() {
    this.list = await getJSON(`${this.api}/incidents`);
    this.render();
  }

  // Alerts come live; the server gathers them into incidents: ask it once a burst is over.
  alerted() {
    clearTimeout(this.later);
    this.later = setTimeout(() => this.load().catch(() => {}), 500);
  }

  async ack(id, button) {
    button.disabled = true;
    const r = await this.send("POST", `/incidents/${id}/ack`, null);
    if (r.ok) {
      const i = this.list.findIndex((x) => x.id === id);
      if (i >= 0) this.list[i] = r.body;
      this.render();
    } else {
      button.disabled = false;
      button.title = r.error;
      button.textContent = "refused";
    }
  }

  async send(method, path, body) {
    try {
      const r = await fetch(`${this.api}${path}`, {
        method,
        headers: { "Content-Type": "application/json", "X-CSRF-Token": this.csrf ?? "" },
        body: body == null ? undefined : body,
      });
      const reply = await r.json().catch(() => ({}));
      const error = (reply.error ?? `refused (${r.status})`) + (r.status === 401 ? " — sign in again" : "");
      return { ok: r.ok, body: reply, error };
    } catch (e) {
      return { ok: false, error: `could not reach the server (${e.message})` };
    }
  }

  render() {
    const open = this.list.filter((i) => i.acked_by == null);
    if (this.panel) {
      const items = this.list.slice().reverse().map((i) => this.item(i));
      if (!items.length) items.push(muted("No incidents: no alert has fired."));
      this.panel.replaceChildren(...items);
    }
    if (this.dock) {
      this.dock.replaceChildren(...open.slice(-3).reverse().map((i) => this.item(i, true)));
      const more = document.getElementById("dock-incidents-count");
      if (more) more.textContent = open.length ? `open incidents: ${open.length}` : "no open incidents";
    }
    this.onChange(this.list);
  }

  item(i, brief = false) {
    const li = document.createElement("li");
    li.className = "incident";
    li.dataset.severity = i.severity;
    li.dataset.open = String(i.acked_by == null);
    const steps = i.start_step === i.end_step ? `step ${count(i.start_step)}` : `steps ${count(i.start_step)}–${count(i.end_step)}`;
    li.innerHTML = `<b></b><span class="where"></span><span class="msg"></span>`;
    li.querySelector("b").textContent = i.name;
    li.querySelector(".where").textContent = `${steps}${i.alerts > 1 ? ` · ${i.alerts} alerts` : ""}`;
    li.querySelector(".msg").textContent = brief ? "" : i.peak_message;
    if (i.acked_by != null) {
      const who = document.createElement("span");
      who.className = "acked muted";
      who.textContent = `acknowledged by ${i.acked_by} at ${new Date(i.acked_at * 1000).toLocaleTimeString([], { hour12: false })}`;
      li.append(who);
    } else if (this.csrf) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "mini";
      b.dataset.ack = String(i.id);
      b.textContent = "Acknowledge";
      li.append(b);
    }
    return li;
  }

  // The JSON editor of the run's `thresholds` or `rules`: filled from the server, saved with
  // PUT; the server checks it and answers why it refuses.
  editor(which) {
    const form = document.getElementById(`edit-${which}`);
    if (!form) return;
    const text = form.querySelector("textarea");
    const out = form.querySelector("output");
    const fill = () =>
      getJSON(`${this.api}/${which}`)
        .then((v) => {
          text.value = JSON.stringify(v, null, 2);
        })
        .catch((e) => {
          out.textContent = e.message;
        });
    fill();
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      out.textContent = "";
      try {
        JSON.parse(text.value);
      } catch (err) {
        out.textContent = `not JSON: ${err.message}`;
        return;
      }
      const r = await this.send("PUT", `/${which}`, text.value);
      out.textContent = r.ok ? "saved: in force from the next step" : r.error;
      if (r.ok) text.value = JSON.stringify(r.body, null, 2);
    });
  }
}

function muted(text) {
  const li = document.createElement("li");
  li.className = "muted";
  li.textContent = text;
  return li;
}
