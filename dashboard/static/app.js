// tickwork dashboard: write buttons, times in the browser's zone, and live updates over
// /api/events. This script builds no markup: when an event arrives it fetches the part of the
// page the event touches, rendered by the server from the same template as the page
// (dashboard/pages.py lists the parts), and swaps it in.
"use strict";

const body = document.body;
const page = body.dataset.page;
const csrfMeta = document.querySelector('meta[name="csrf-token"]');
const csrf = csrfMeta ? csrfMeta.content : null;
const headerMeta = document.querySelector('meta[name="csrf-header"]');
const csrfHeader = headerMeta ? headerMeta.content : "X-CSRF-Token";

// -- times: shown in the browser's own zone, the zone named ------------------------------------

const CLOCK = {hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
               timeZoneName: "short"};
const timeOfDay = new Intl.DateTimeFormat(undefined, CLOCK);
const dateAndTime = new Intl.DateTimeFormat(undefined,
  {year: "numeric", month: "short", day: "numeric", ...CLOCK});

function showTime(node) {
  const when = new Date(node.dateTime);
  if (Number.isNaN(when.getTime())) return;
  const today = when.toDateString() === new Date().toDateString();
  node.textContent = (today ? timeOfDay : dateAndTime).format(when);
  node.title = when.toISOString();
}

function all(root, selector) {
  const found = Array.from(root.querySelectorAll(selector));
  if (root.matches && root.matches(selector)) found.unshift(root);
  return found;
}

// Everything a freshly rendered part needs from the script: local times, waterfall bars.
function enhance(root) {
  for (const node of all(root, "time[datetime]")) showTime(node);
  for (const bar of all(root, ".wf-bar[data-left]")) {
    bar.style.setProperty("margin-left", bar.dataset.left + "%");
    bar.style.setProperty("width", bar.dataset.width + "%");
  }
}

// A running stack's "next tick" moves on with the clock.
function advanceNextTicks() {
  const now = Date.now() / 1000;
  for (const node of document.querySelectorAll("time[data-every]")) {
    const every = Number(node.dataset.every);
    if (!(every > 0)) continue;
    const next = (Math.floor(now / every) + 1) * every * 1000;
    if (new Date(node.dateTime).getTime() === next) continue;
    node.dateTime = new Date(next).toISOString();
    showTime(node);
  }
}

// -- server-rendered parts -------------------------------------------------------------------

// Fetch a part; null when its stack or tick is gone (404).
async function fetchPart(url) {
  const r = await fetch(url, {headers: {"Accept": "text/html"}, credentials: "same-origin",
                              cache: "no-store"});
  if (r.status === 404) return null;
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  const holder = document.createElement("template");
  holder.innerHTML = await r.text();  // escaped by the server's templates
  return holder.content.firstElementChild;
}

// What the reader opened stays open in the fresh copy (a prompt, an artifact).
function keepOpen(old, fresh) {
  for (const details of old.querySelectorAll("details[id][open]")) {
    const twin = fresh.querySelector(`details[id="${CSS.escape(details.id)}"]`);
    if (twin) twin.open = true;
  }
}

// Replace what `selector` finds with a fresh copy from `url`; `place(fresh)` puts a part that
// is not on the page yet; a part that is gone is removed (and `gone()` says so).
async function swap(url, selector, place, gone) {
  const fresh = await fetchPart(url);
  const old = document.querySelector(selector);
  if (fresh === null) {
    if (old) old.remove();
    if (gone) gone();
    return;
  }
  enhance(fresh);
  if (old) {
    keepOpen(old, fresh);
    old.replaceWith(fresh);
  } else if (place) {
    place(fresh);
  }
}

// Rows stay in id order (newest first in a timeline) whichever answer arrives first.
function insertById(tbody, row, key, newestFirst) {
  const id = Number(row.dataset[key]);
  for (const other of tbody.children) {
    const theirs = Number(other.dataset[key]);
    if (newestFirst ? theirs < id : theirs > id) {
      other.before(row);
      return;
    }
  }
  tbody.append(row);
}

// One refresh per part at a time: events that arrive meanwhile share the next one.
const jobs = new Map();

function soon(key, run, delay = 150) {
  const job = jobs.get(key);
  if (job) {
    if (job.running) job.again = true;
    return;
  }
  const mine = {running: false, again: false};
  jobs.set(key, mine);
  setTimeout(async () => {
    mine.running = true;
    try {
      await run();
    } catch (err) {
      console.warn("tickwork: refresh failed", err);
    } finally {
      jobs.delete(key);
      if (mine.again) soon(key, run, 0);
    }
  }, delay);
}

const refresh = {
  stackRow(id) {
    soon(`row ${id}`, () => swap(`/stacks/${id}/row`, `#stacks tr[data-stack-id="${id}"]`,
      (row) => {
        const tbody = document.querySelector("#stacks tbody");
        if (!tbody) return;
        insertById(tbody, row, "stackId", false);
        const empty = document.getElementById("no-stacks");
        if (empty) empty.remove();
      }));
  },
  toolbar() {
    soon("toolbar", () => swap("/stacks/toolbar", "#stacks-toolbar"));
  },
  head(id) {
    soon("head", () => swap(`/stacks/${id}/head`, "#stack-head", null,
                            () => flash("This stack has been deleted.", true)));
  },
  extras(id) {
    soon("extras", () => swap(`/stacks/${id}/extras`, "#stack-extras"), 300);
  },
  tickRow(id) {
    soon(`tick ${id}`, () => swap(`/ticks/${id}/row`, `#timeline tr[data-tick-id="${id}"]`,
      (row) => {
        const tbody = document.querySelector("#timeline tbody");
        if (tbody) insertById(tbody, row, "tickId", true);
      }));
  },
  tick(id) {
    soon("tick", () => swap(`/ticks/${id}/detail`, "#tick"));
  },
  system() {  // its figures change with every tick: at most once a second
    soon("system", () => swap("/system/detail", "#system"), 1000);
  },
};

// After a write from this page: what it changed, at once (the events follow anyway).
function changed(stackId) {
  if (page === "stacks") {
    if (stackId) refresh.stackRow(stackId);
    refresh.toolbar();
  } else if (page === "stack" && stackId) {
    refresh.head(stackId);
  }
}

// -- writes ------------------------------------------------------------------------------------

function flash(message, isError) {
  const box = document.getElementById("flash");
  if (!box) return;
  box.textContent = message;
  box.classList.toggle("error", Boolean(isError));
  box.hidden = !message;
}

// What a refused request says: each field's problem when the API lists them.
function problem(data, status) {
  if (!data) return `request failed: ${status}`;
  const detail = data.detail !== undefined ? data.detail : data.errors;
  if (Array.isArray(detail) && detail.length) {
    return detail.map((d) => {
      if (typeof d === "string") return d;
      let field = d.field || (Array.isArray(d.loc) ? d.loc.join(".") : "");
      field = String(field).replace(/^body\.?/, "");
      const message = d.message || d.msg || d.detail || "";
      return field && field !== "request" ? `${field}: ${message}` : message;
    }).join("; ");
  }
  if (typeof detail === "string" && detail) return detail;
  return data.error || data.title || data.message || `request failed: ${status}`;
}

async function write(method, url, payload) {
  const headers = {"Accept": "application/json"};
  if (csrf) headers[csrfHeader] = csrf;
  if (payload !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(url, {
    method, headers, credentials: "same-origin",
    body: payload === undefined ? undefined : JSON.stringify(payload),
  });
  const data = r.status === 204 ? null : await r.json().catch(() => null);
  if (!r.ok) {
    flash(problem(data, r.status), true);
    return null;
  }
  // A play or pause that found the stack already so says what it found.
  flash(data && data.changed === false && data.message ? data.message : "", false);
  return data || {};
}

function askReason(question) {
  const reason = window.prompt(question, "");
  if (reason === null) return null;
  return reason ? {reason} : {};
}

const actions = {
  "play": (id) => write("POST", `/api/stacks/${id}/play`),
  "pause": (id) => {
    const body = askReason("Why pause this stack? (optional)");
    return body === null ? null : write("POST", `/api/stacks/${id}/pause`, body);
  },
  "tick": (id) => write("POST", `/api/stacks/${id}/tick`),
  "play-all": () => write("POST", "/api/stacks/play-all"),
  "pause-all": () => {
    const body = askReason("Why pause every stack? (optional)");
    return body === null ? null : write("POST", "/api/stacks/pause-all", body);
  },
};

async function copy(button) {
  try {
    await navigator.clipboard.writeText(button.dataset.copy);
    flash("copied " + button.dataset.copy, false);
  } catch (err) {
    const code = button.parentElement && button.parentElement.querySelector("code");
    if (code) window.getSelection().selectAllChildren(code);
  }
}

document.addEventListener("click", async (ev) => {
  const copyButton = ev.target.closest("button[data-copy]");
  if (copyButton) {
    await copy(copyButton);
    return;
  }
  const button = ev.target.closest("button[data-action]");
  if (!button || button.disabled) return;
  const run = actions[button.dataset.action];
  if (!run) return;
  const id = button.dataset.stack ? Number(button.dataset.stack) : null;
  button.disabled = true;  // until the part is rendered again
  let result = null;
  try {
    result = await run(id);
  } finally {
    if (!result) button.disabled = false;
  }
  if (result) changed(id);
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
      changed(made.id);
    }
  });
}

// -- the event stream --------------------------------------------------------------------------

function onEvent(kind, data) {
  // Other scripts of the page (the charts) follow the same stream through this DOM event.
  document.dispatchEvent(new CustomEvent("tickwork:event", {detail: {kind, data}}));
  // stack.updated carries the stack (its id is `id`); the others carry `stack_id`.
  const stackId = kind === "stack.updated" ? data.id : data.stack_id;
  const ticking = kind.startsWith("tick.");
  if (page === "stacks") {
    if (stackId) refresh.stackRow(stackId);
    if (kind === "stack.updated") refresh.toolbar();
  } else if (page === "stack" && stackId === Number(body.dataset.stackId)) {
    if (kind === "stack.updated" || ticking) refresh.head(stackId);
    if (ticking) refresh.tickRow(data.id);
    if (kind === "tick.finished" || kind === "step.finished") refresh.extras(stackId);
  } else if (page === "tick") {
    const tickId = ticking ? data.id : data.tick_id;
    if (tickId === Number(body.dataset.tickId) && kind !== "tick.queued") {
      refresh.tick(tickId);
    }
  } else if (page === "system" && kind === "tick.finished") {
    refresh.system();
  }
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

enhance(document.body);
setInterval(advanceNextTicks, 1000);
if (document.getElementById("live")) connect();
