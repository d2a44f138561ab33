// Operator dashboard: polls the admin API every few seconds with the key pasted into the page.
// The key lives only in this tab's sessionStorage. Every value from the server reaches the DOM
// through textContent or an attribute, never as HTML (device names are user input).
import { MinuteChart } from "./chart.js";

const STORAGE_KEY = "smsgw.adminKey";
const POLL_MS = 2500;
const API = "/api/v1/admin";

const $ = (id) => document.getElementById(id);
const chart = new MinuteChart($("chart"));
const state = {
  key: null,
  timer: null,
  polling: false,
  rows: new Map(),          // gateway id -> <tr>
};

// ---- the key ---------------------------------------------------------------------------

function showLogin(message) {
  stopPolling();
  state.key = null;
  sessionStorage.removeItem(STORAGE_KEY);
  $("dashboard").hidden = true;
  $("login").hidden = false;
  $("forget").hidden = true;
  $("login-error").textContent = message || "";
  setLive("idle", "Not connected");
  $("key").focus();
}

async function connect(key) {
  state.key = key;
  $("connect").disabled = true;
  try {
    const stats = await api("GET", "/stats");
    sessionStorage.setItem(STORAGE_KEY, key);
    $("login").hidden = true;
    $("dashboard").hidden = false;
    $("forget").hidden = false;
    $("key").value = "";
    chart.reset();
    renderStats(stats);
    await refreshGateways();
    setLive("live", "Live");
    schedule();
  } catch (err) {
    showLogin(err.message);
  } finally {
    $("connect").disabled = false;
  }
}

// ---- talking to the API ---------------------------------------------------------------

class ApiFailure extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.key}`, Accept: "application/json" };
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(API + path, init);
  } catch (err) {
    throw new ApiFailure(0, "The server cannot be reached");
  }
  let data = null;
  try { data = await response.json(); } catch (err) { data = null; }
  if (!response.ok) {
    const reason = data && typeof data.error === "string" ? data.error : `HTTP ${response.status}`;
    if (response.status === 401) throw new ApiFailure(401, `Key rejected: ${reason}`);
    if (response.status === 403) throw new ApiFailure(403, `Key not allowed: ${reason}`);
    throw new ApiFailure(response.status, reason);
  }
  return data;
}

// ---- polling ------------------------------------------------------------------------------

function schedule(delay = POLL_MS) {
  stopPolling();
  state.timer = setTimeout(poll, delay);
}

function stopPolling() {
  if (state.timer !== null) clearTimeout(state.timer);
  state.timer = null;
}

async function poll() {
  if (state.key === null || state.polling) return;
  state.polling = true;
  let delay = POLL_MS;
  try {
    await refreshAll();
    setLive("live", "Live");
  } catch (err) {
    if (err.status === 401 || err.status === 403) {
      state.polling = false;
      showLogin(err.message);
      return;
    }
    delay = err.status === 429 ? POLL_MS * 4 : POLL_MS * 2;
    setLive("error", err.status === 429 ? "Rate limited, slowing down" : `${err.message}; retrying`);
  } finally {
    state.polling = false;
  }
  if (state.key !== null) schedule(delay);
}

async function refreshAll() {
  const [stats] = await Promise.all([api("GET", "/stats"), refreshGateways()]);
  renderStats(stats);
}

async function refreshGateways() {
  const all = [];
  for (let page = 1; page <= 20; page++) {
    const data = await api("GET", `/gateways?limit=100&page=${page}`);
    all.push(...data.gateways);
    if (page >= data.pages) break;
  }
  renderGateways(all);
}

// ---- statistics and the chart ----------------------------------------------------------

function renderStats(stats) {
  const gw = stats.gateways, msg = stats.messages, otp = stats.otp;
  text("s-online", gw.online); text("s-total", gw.total); text("s-active", gw.active);
  text("s-sent", msg.sent_today); text("s-total-sent", msg.total_sent);
  text("s-received", msg.received_today); text("s-total-received", msg.total_received);
  text("s-pending", msg.pending); text("s-failed", msg.failed_today);
  text("s-otp-sent", otp.sent_today); text("s-otp-rate", `${otp.verification_rate}%`);
  text("updated", new Date().toLocaleTimeString());
  const minute = chart.sample(msg.total_sent, msg.total_received, Date.now());
  text("rate-sent", minute.sent);
  text("rate-received", minute.received);
  chart.draw();
}


// ---- the gateway table -------------------------------------------------------------------

function renderGateways(gateways) {
  const tbody = $("gateways").querySelector("tbody");
  const seen = new Set();
  gateways.forEach((g, index) => {
    seen.add(g.id);
    let row = state.rows.get(g.id);
    if (!row) {
      row = buildRow(g.id);
      state.rows.set(g.id, row);
    }
    updateRow(row, g);
    if (tbody.children[index] !== row) tbody.insertBefore(row, tbody.children[index] || null);
  });
  for (const [id, row] of state.rows) {
    if (!seen.has(id)) { row.remove(); state.rows.delete(id); }
  }
  $("no-gateways").hidden = gateways.length > 0;
}

function el(tag, className, textValue) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (textValue !== undefined) node.textContent = textValue;
  return node;
}

function buildRow(id) {
  const row = el("tr");
  row.dataset.id = String(id);
  const cells = {};
  for (const name of ["gateway", "status", "active", "priority", "battery", "signal", "inflight",
                      "queue", "today", "heartbeat"]) {
    cells[name] = el("td", ["battery", "signal", "inflight", "queue", "today"].includes(name) ? "n" : "");
    row.appendChild(cells[name]);
  }
  cells.gateway.append(el("span", "name"), el("span", "device"));
  cells.status.append(el("span", "badge"));

  const activeWrap = el("div", "active-cell");
  const toggle = el("button", "small secondary toggle");
  toggle.type = "button";
  toggle.addEventListener("click", () => toggleGateway(row, toggle));
  activeWrap.append(el("span", "badge"), toggle);
  cells.active.append(activeWrap);

  const prio = el("div", "priority");
  const input = el("input");
  Object.assign(input, { type: "number", min: "0", max: "1000", step: "1" });
  input.setAttribute("aria-label", "Priority");
  const save = el("button", "small secondary", "Save");
  save.type = "button";
  save.hidden = true;
  input.addEventListener("input", () => { save.hidden = input.value === row.dataset.priority; });
  input.addEventListener("keydown", (e) => { if (e.key === "Enter") savePriority(row, input, save); });
  save.addEventListener("click", () => savePriority(row, input, save));
  prio.append(input, save);
  cells.priority.append(prio);

  const bars = el("span", "bars");
  for (let i = 0; i < 4; i++) bars.append(el("i"));
  cells.signal.append(bars);
  row._cells = cells;
  return row;
}

function updateRow(row, g) {
  const c = row._cells;
  row.dataset.deviceId = g.device_id;
  row.dataset.status = g.status;
  row.dataset.active = String(g.active);
  c.gateway.querySelector(".name").textContent = g.name;
  c.gateway.querySelector(".name").title = g.name;
  c.gateway.querySelector(".device").textContent = g.device_id;
  const status = c.status.querySelector(".badge");
  status.textContent = g.status;
  status.className = `badge ${g.status === "online" ? "online" : "offline"}`;

  const activeBadge = c.active.querySelector(".badge");
  activeBadge.textContent = g.active ? "active" : "inactive";
  activeBadge.className = `badge ${g.active ? "active" : "inactive"}`;
  const toggle = c.active.querySelector("button");
  toggle.textContent = g.active ? "Disable" : "Enable";
  toggle.className = `small toggle ${g.active ? "danger" : "secondary"}`;

  const input = c.priority.querySelector("input");
  const save = c.priority.querySelector("button");
  row.dataset.priority = String(g.priority);
  const editing = document.activeElement === input || !save.hidden;  // never clobber a typed value
  if (!editing) input.value = String(g.priority);

  const battery = g.battery_level;
  c.battery.textContent = battery === null || battery === undefined ? "—" : `${battery}%`;
  c.battery.className = `n battery${battery !== null && battery !== undefined && battery < 20 ? " low" : ""}`;
  const signal = g.signal_strength;
  c.signal.querySelectorAll(".bars i").forEach((bar, i) => {
    bar.className = signal !== null && signal !== undefined && i < signal ? "on" : "";
  });
  c.signal.title = signal === null || signal === undefined ? "unknown" : `${signal} / 4`;
  c.inflight.textContent = String(g.in_flight ?? 0);
  c.queue.textContent = String(g.queue_depth ?? 0);
  c.today.textContent = `${g.messages_sent_today} / ${g.messages_received_today}`;
  c.heartbeat.textContent = ago(g.last_heartbeat_at);
  c.heartbeat.title = g.last_heartbeat_at || "";
}

async function toggleGateway(row, button) {
  button.disabled = true;
  $("action-error").textContent = "";
  try {
    await api("POST", `/gateways/${encodeURIComponent(row.dataset.id)}/toggle`);
    await refreshAll();
  } catch (err) {
    actionFailed(err);
  } finally {
    button.disabled = false;
  }
}

async function savePriority(row, input, save) {
  const value = Number(input.value);
  if (!Number.isInteger(value) || value < 0 || value > 1000) {
    $("action-error").textContent = "Priority must be a whole number from 0 to 1000.";
    return;
  }
  save.disabled = true;
  $("action-error").textContent = "";
  try {
    await api("PATCH", `/gateways/${encodeURIComponent(row.dataset.id)}`, { priority: value });
    save.hidden = true;
    input.blur();
    await refreshAll();
  } catch (err) {
    actionFailed(err);
  } finally {
    save.disabled = false;
  }
}

function actionFailed(err) {
  if (err.status === 401 || err.status === 403) showLogin(err.message);
  else $("action-error").textContent = err.message;
}

// ---- small helpers ----------------------------------------------------------------------

function text(id, value) { $(id).textContent = String(value); }

function setLive(stateName, label) {
  $("live").dataset.state = stateName;
  $("live-text").textContent = label;
}

function ago(iso) {
  if (!iso) return "—";
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (Number.isNaN(seconds)) return "—";
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleString();
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    if (key) connect(key);
  });
  $("forget").addEventListener("click", () => showLogin(""));
  window.addEventListener("resize", () => chart.draw());
  const saved = sessionStorage.getItem(STORAGE_KEY);
  if (saved) connect(saved); else $("key").focus();
});
