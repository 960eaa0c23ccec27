// tickwork dashboard: write buttons and live updates over /api/events.
// Data from the server is put on the page with textContent only, never as HTML.
"use strict";

const body = document.body;
const csrfMeta = document.querySelector('meta[name="csrf-token"]');
const csrf = csrfMeta ? csrfMeta.content : null;
const DASH = "—";

// -- formatting (matches dashboard/pages_html.py) ------------------------------------------

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function badge(status) {
  return el("span", "badge " + status, status);
}

function timeEl(iso) {
  if (!iso) return document.createTextNode(DASH);
  const d = new Date(iso);
  const t = el("time", null, d.toISOString().slice(11, 19));
  t.dateTime = d.toISOString();
  t.title = d.toISOString();
  return t;
}

function ms(v) {
  if (v === null || v === undefined) return DASH;
  return v >= 1000 ? (v / 1000).toFixed(2) + " s" : Math.round(v) + " ms";
}

function nextTick(stack) {
  if (stack.execution_state !== "running") return null;
  const now = Date.now() / 1000;
  const next = (Math.floor(now / stack.interval_s) + 1) * stack.interval_s;
  return new Date(next * 1000).toISOString();
}

function fill(cell, ...nodes) {
  cell.replaceChildren(...nodes);
}

// -- writes ---------------------------------------------------------------------------------

function flash(message, isError) {
  const box = document.getElementById("flash");
  if (!box) return;
  box.textContent = message;
  box.classList.toggle("error", Boolean(isError));
  box.hidden = !message;
}

async function write(method, url, payload) {
  const headers = {"Accept": "application/json"};
  if (csrf) headers["X-CSRF-Token"] = csrf;
  if (payload !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(url, {
    method, headers, credentials: "same-origin",
    body: payload === undefined ? undefined : JSON.stringify(payload),
  });
  const data = r.status === 204 ? null : await r.json().catch(() => null);
  if (!r.ok) {
    flash((data && data.error) || ("request failed: " + r.status), true);
    return null;
  }
  // A play or pause that found the stack already so says what it found.
  flash(data && data.changed === false && data.message ? data.message : "", false);
  return data;
}

const actions = {
  "play": (id) => write("POST", `/api/stacks/${id}/play`),
  "pause": (id) => {
    const reason = window.prompt("Why pause this stack? (optional)", "");
    if (reason === null) return null;
    return write("POST", `/api/stacks/${id}/pause`, reason ? {reason} : {});
  },
  "tick": (id) => write("POST", `/api/stacks/${id}/tick`),
  "play-all": () => write("POST", "/api/stacks/play-all"),
  "pause-all": () => {
    const reason = window.prompt("Why pause every stack? (optional)", "");
    if (reason === null) return null;
    return write("POST", "/api/stacks/pause-all", reason ? {reason} : {});
  },
};

document.addEventListener("click", async (ev) => {
  const button = ev.target.closest("button[data-action]");
  if (!button || button.disabled) return;
  const run = actions[button.dataset.action];
  if (!run) return;
  const id = button.dataset.stack;
  const result = await run(id);
  if (result && id) refreshStack(Number(id));
});

const createForm = document.getElementById("create-stack");
if (createForm) {
  createForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const form = new FormData(createForm);
    const made = await write("POST", "/api/stacks",
      {name: String(form.get("name") || ""), goal: String(form.get("goal") || "")});
    if (made) {
      createForm.reset();
      renderStackRow(made);
    }
  });
}

// -- Stacks page: one row per stack --------------------------------------------------------

function actionButton(action, label, id) {
  const b = el("button", null, label);
  b.type = "button";
  b.dataset.action = action;
  b.dataset.stack = String(id);
  if (!csrf) {
    b.disabled = true;
    b.title = "sign in to change things";
  }
  return b;
}

function renderStackRow(stack) {
  const tbody = document.querySelector("#stacks tbody");
  if (!tbody) return;
  let row = tbody.querySelector(`tr[data-stack-id="${stack.id}"]`);
  if (!row) {
    row = el("tr");
    row.dataset.stackId = String(stack.id);
    for (const cls of ["name", "state", "last", "next", "rate", "tokens num", "cost num",
                       "actions"]) row.appendChild(el("td", cls));
    tbody.appendChild(row);
    const empty = document.querySelector("p.empty");
    if (empty) empty.remove();
  }
  row.dataset.interval = String(stack.interval_s);
  row.dataset.state = stack.execution_state;
  const cells = row.children;
  const link = el("a", null, stack.name);
  link.href = `/stacks/${stack.id}`;
  fill(cells[0], link);
  fill(cells[1], badge(stack.execution_state));
  const last = stack.last_tick;
  if (last) fill(cells[2], badge(last.status), document.createTextNode(" "),
                 timeEl(last.finished_at || last.queued_at));
  else fill(cells[2], document.createTextNode(DASH));
  fill(cells[3], timeEl(nextTick(stack)));
  const c = stack.counts;
  const done = c.succeeded + c.failed + c.timed_out;
  cells[4].textContent = done ? Math.round(100 * c.succeeded / done) + "%" : DASH;
  const u = stack.usage_today;
  cells[5].textContent = String(u.input_tokens + u.output_tokens);
  cells[6].textContent = "$" + u.cost_usd.toFixed(4);
  if (!cells[7].children.length) {
    fill(cells[7], actionButton("play", "Play", stack.id), actionButton("pause", "Pause", stack.id),
         actionButton("tick", "Run a tick now", stack.id));
  }
}

const pending = new Map();  // stack id -> timer: coalesce bursts of events per stack

function refreshStack(id) {
  if (pending.has(id)) return;
  pending.set(id, setTimeout(async () => {
    pending.delete(id);
    const r = await fetch(`/api/stacks/${id}`, {headers: {"Accept": "application/json"}});
    if (r.status === 404) {
      const row = document.querySelector(`#stacks tr[data-stack-id="${id}"]`);
      if (row) row.remove();
      return;
    }
    if (!r.ok) return;
    const stack = await r.json();
    if (body.dataset.page === "stacks") renderStackRow(stack);
    if (body.dataset.page === "stack") renderStackHead(stack);
  }, 200));
}

// -- Stack page: header and the tick timeline ----------------------------------------------

function renderStackHead(stack) {
  const head = document.querySelector("header.stack-head");
  if (!head) return;
  const h1 = head.querySelector("h1");
  fill(h1, document.createTextNode(stack.name + " "), badge(stack.execution_state));
  head.querySelector(".reason").textContent =
    stack.pause_reason ? "paused: " + stack.pause_reason : "";
  head.dataset.interval = String(stack.interval_s);
  head.dataset.state = stack.execution_state;
  fill(head.querySelector(".next"), timeEl(nextTick(stack)));
}

function renderTickRow(tick) {
  const tbody = document.querySelector("#timeline tbody");
  if (!tbody) return;
  let row = tbody.querySelector(`tr[data-tick-id="${tick.id}"]`);
  if (!row) {
    row = el("tr");
    row.dataset.tickId = String(tick.id);
    for (const cls of ["id", "status", "trigger", "when", "lateness num", "duration num",
                       "reason"]) row.appendChild(el("td", cls));
    tbody.prepend(row);
  }
  const cells = row.children;
  const link = el("a", null, "#" + tick.id);
  link.href = `/ticks/${tick.id}`;
  fill(cells[0], link);
  fill(cells[1], badge(tick.status));
  cells[2].textContent = tick.trigger;
  fill(cells[3], timeEl(tick.started_at || tick.scheduled_at));
  cells[4].textContent = ms(tick.lateness_ms);
  cells[5].textContent = ms(tick.duration_ms);
  cells[6].textContent = tick.reason || "";
}

// -- server-rendered parts: re-read this page (escaped by the server) and swap one part in --

let reloading = false;

async function refreshPart(selector) {
  if (reloading) return;
  reloading = true;
  try {
    const r = await fetch(window.location.pathname, {headers: {"Accept": "text/html"}});
    if (!r.ok) return;
    const doc = new DOMParser().parseFromString(await r.text(), "text/html");
    const fresh = doc.querySelector(selector);
    const old = document.querySelector(selector);
    if (fresh && old) old.replaceWith(document.adoptNode(fresh));
  } finally {
    reloading = false;
  }
}

// The Tick page: everything below the live indicator is the tick.
function refreshTick() {
  return refreshPart("#tick");
}

// -- the event stream -----------------------------------------------------------------------

function onEvent(kind, data) {
  const page = body.dataset.page;
  const stackId = data.stack_id !== undefined ? data.stack_id : data.id;
  if (page === "stacks") {
    if (kind === "stack.updated" && data.deleted) {
      const row = document.querySelector(`#stacks tr[data-stack-id="${data.id}"]`);
      if (row) row.remove();
    } else if (stackId) {
      refreshStack(stackId);
    }
  } else if (page === "stack" && stackId === Number(body.dataset.stackId)) {
    if (kind === "stack.updated") refreshStack(stackId);
    else if (kind.startsWith("tick.")) {
      renderTickRow(data);
      refreshStack(stackId);
      if (kind === "tick.finished") refreshPart("#stack-extras");
    }
  } else if (page === "tick") {
    const tickId = kind.startsWith("tick.") ? data.id : data.tick_id;
    if (tickId === Number(body.dataset.tickId) && kind !== "tick.queued") refreshTick();
  } else if (page === "system" && kind === "tick.finished") {
    refreshSystem();
  }
}

// The System page: its figures change with every tick; refresh at most once a second.
let systemPending = false;
function refreshSystem() {
  if (systemPending) return;
  systemPending = true;
  setTimeout(() => { systemPending = false; refreshPart("#system"); }, 1000);
}

function connect() {
  const status = document.getElementById("live");
  // Resume from the last event the server-rendered page had seen; on a reconnect the
  // browser sends Last-Event-ID itself, which the server prefers.
  const after = body.dataset.after;
  const source = new EventSource("/api/events" + (after ? "?after=" + after : ""));
  source.onopen = () => { status.textContent = "live"; status.className = "live on"; };
  source.onerror = () => { status.textContent = "reconnecting…"; status.className = "live"; };
  for (const kind of ["stack.updated", "tick.queued", "tick.started", "step.finished",
                      "tick.finished"]) {
    source.addEventListener(kind, (ev) => onEvent(kind, JSON.parse(ev.data)));
  }
}

// The "next tick" cells move on with the clock.
setInterval(() => {
  for (const holder of document.querySelectorAll("[data-interval]")) {
    const cell = holder.querySelector(".next");
    if (!cell) continue;
    const state = holder.dataset.state
      || (holder.querySelector(".badge") || {}).textContent;
    fill(cell, timeEl(nextTick({execution_state: state,
                                interval_s: Number(holder.dataset.interval)})));
  }
}, 1000);

if (document.getElementById("live")) connect();
