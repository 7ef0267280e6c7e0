// The cortex dashboard: polls /admin/fleet (nodes, GPUs, models, traffic), /v1/models
// (the catalogue) and /admin/requests (the activity log), calls POST
// /admin/models/{id}/{action} for the buttons, and streams the playground's chats from
// /v1/chat/completions. Paths are relative to the gateway's root, one level above this
// page, so the page works where a proxy mounts the gateway under a prefix.
// The admin key, when the gateway needs one, lives in this tab's sessionStorage only.
// Everything data-derived is written with textContent, never parsed as HTML.
"use strict";

const KEY = "cortex-admin-key";
const params = new URLSearchParams(location.search);
const INTERVAL_MS = Math.max(250, 1000 * (Number(params.get("interval")) || 2));
const ROOT = new URL("../", location.href); // the page is ROOT/ui/
const $ = (id) => document.getElementById(id);

let timer = null;
let busy = new Set(); // "action model node" of calls under way: their buttons stay disabled

function key() { return sessionStorage.getItem(KEY) || ""; }

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function headers() {
  const out = { "content-type": "application/json" };
  if (key()) out.authorization = `Bearer ${key()}`;
  return out;
}

async function failure(reply) {
  const text = await reply.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = null; }
  const message = (body && body.error && body.error.message) || reply.statusText;
  return new HttpError(reply.status, `${reply.status}: ${message}`);
}

// `path` has no leading slash: it is resolved against the gateway's root.
async function api(path, options = {}) {
  const reply = await fetch(new URL(path, ROOT), { ...options, headers: headers(),
    cache: "no-store" });
  if (!reply.ok) throw await failure(reply);
  const text = await reply.text();
  return text ? JSON.parse(text) : null;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
  }
  return node;
}

// `42s`, `4m10s`, `2h05m`, as `cortex status` writes them.
function duration(seconds) {
  if (seconds === undefined || seconds === null) return "–";
  const whole = Math.floor(seconds);
  const pad = (n) => String(n).padStart(2, "0");
  if (whole < 60) return `${whole}s`;
  if (whole < 3600) return `${Math.floor(whole / 60)}m${pad(whole % 60)}s`;
  return `${Math.floor(whole / 3600)}h${pad(Math.floor((whole % 3600) / 60))}m`;
}

const gib = (bytes) => `${((bytes || 0) / 2 ** 30).toFixed(2)} GiB`;
const rate = (value) => (value === undefined || value === null ? "–" : value.toFixed(1));

function meter(label, used, total, testid) {
  const share = total > 0 ? Math.min(1, Math.max(0, used / total)) : 0;
  const fill = el("div", { class: "fill" });
  fill.style.width = `${(share * 100).toFixed(1)}%`; // CSSOM: allowed by the page's CSP
  if (share >= 0.95) fill.classList.add("full");
  else if (share >= 0.8) fill.classList.add("high");
  return el("div", { class: "meter", "data-testid": testid },
    el("div", { class: "label" }, el("span", { text: label }),
      el("span", { text: `${gib(used)} / ${gib(total)} (${Math.round(share * 100)}%)` })),
    el("div", { class: "track", role: "meter", "aria-valuemin": "0", "aria-valuemax": "100",
      "aria-valuenow": String(Math.round(share * 100)), "aria-label": label }, fill));
}

function say(text, isError = false) {
  const box = $("message");
  box.textContent = text;
  box.classList.toggle("error", isError);
  box.hidden = !text;
}

function askForKey(reason) {
  $("key-reason").textContent = reason;
  $("key-form").hidden = false;
  $("key-input").focus();
}

function button(action, model, node, label) {
  const id = `${action} ${model} ${node || ""}`;
  return el("button", {
    type: "button", "data-action": action, "data-model": model, "data-node": node,
    disabled: busy.has(id) ? "" : null, text: label,
    onclick: () => act(id, `${action} ${model}${node ? ` on ${node}` : ""}`,
      `admin/models/${encodeURIComponent(model)}/${action}`, node ? { node } : {}),
  });
}

function nodeButton(node) {
  const action = node.draining ? "undrain" : "drain";
  const id = `${action} node ${node.name}`;
  return el("button", {
    type: "button", "data-action": action, "data-node": node.name,
    disabled: busy.has(id) ? "" : null, text: action,
    onclick: () => act(id, `${action} ${node.name}`,
      `admin/nodes/${encodeURIComponent(node.name)}/${action}`, {}),
  });
}

async function act(id, what, path, body) {
  busy.add(id);
  render.last && render(render.last);
  say(`${what}…`);
  try {
    const reply = await api(path, { method: "POST", body: JSON.stringify(body) });
    const where = reply.unloaded_from ? ` (from ${reply.unloaded_from.join(", ")})`
      : reply.node && !what.endsWith(reply.node) ? ` (on ${reply.node})` : "";
    say(`${what}: done${where}`);
  } catch (error) {
    say(`${what}: ${error.message}`, true);
    if (error.status === 401 || error.status === 403) askForKey(error.message);
  } finally {
    busy.delete(id);
    await refresh();
  }
}

function renderNodes(nodes) {
  const cards = nodes.map((node) => {
    const state = !node.up ? "down" : node.draining ? "draining" : "up";
    const gpus = node.gpus.map((gpu) => meter(
      `GPU ${gpu.index}: ${gpu.name}${gpu.utilization === null || gpu.utilization === undefined
        ? "" : `, ${gpu.utilization}% busy`}`,
      gpu.memory_used, gpu.memory_total, `gpu-${node.name}-${gpu.index}`));
    const inFlight = Object.values(node.in_flight).reduce((a, b) => a + b, 0);
    return el("article", { class: "node", "data-node": node.name },
      el("h3", {}, el("span", { text: node.name }),
        el("span", { class: `state-${state}`, text: state }),
        el("span", { class: "endpoint", text: node.endpoint }),
        node.up ? nodeButton(node) : null),
      meter("reserved by models / budget", node.reserved_bytes, node.budget_bytes,
        `budget-${node.name}`),
      ...gpus,
      node.gpus.length ? null : el("p", { class: "muted", text: node.cpu_only === null
        ? "not reported yet" : "CPU only: the budget is system RAM" }),
      el("p", { class: "muted", text: `${node.models.length} models, ${inFlight} in flight`
        + (node.version ? `, neuron ${node.version}` : "")
        + (node.last_error && !node.up ? `; ${node.last_error}` : "") }));
  });
  $("nodes").replaceChildren(...cards);
}

function renderLoaded(fleet, catalogue) {
  const pinned = new Set(catalogue.filter((m) => m.pinned).map((m) => m.id));
  const configured = new Set(catalogue.filter((m) => m.configured !== false).map((m) => m.id));
  const rates = (fleet.traffic && fleet.traffic.models) || {};
  const rows = [];
  for (const node of fleet.nodes) {
    for (const m of node.models) {
      const isPinned = pinned.has(m.id);
      const actions = el("td", { class: "actions" });
      if (m.state === "ready" && !isPinned) actions.append(button("unload", m.id, node.name, "Unload"));
      if (configured.has(m.id)) {
        actions.append(isPinned ? button("unpin", m.id, null, "Unpin")
          : button("pin", m.id, node.name, "Pin"));
      }
      rows.push(el("tr", { "data-model": m.id, "data-node": node.name },
        el("td", {}, m.id, isPinned ? el("span", { class: "badge", text: " pinned" }) : null),
        el("td", { text: node.name }),
        el("td", { class: `state-${m.state}`, "data-testid": "state", text: m.state }),
        el("td", { text: String(m.n_ctx ?? "") }),
        el("td", { text: gib(m.estimate && m.estimate.total) }),
        el("td", { text: String(m.in_flight ?? 0) }),
        el("td", { text: String(m.queued ?? 0) }),
        el("td", { text: rate(rates[m.id] && rates[m.id].output_tokens_per_second) }),
        el("td", { "data-testid": "idle", text: m.in_flight || m.queued || m.state !== "ready"
          ? "–" : duration(m.idle_seconds) }),
        el("td", { "data-testid": "until", text: m.pinned ? "pinned"
          : duration(m.expires_in) }),
        actions));
    }
  }
  $("loaded").tBodies[0].replaceChildren(...rows);
  $("no-loaded").hidden = rows.length > 0;
  $("loads").replaceChildren(...(fleet.loads || []).map((load) => el("li", {
    text: `loading ${load.model} on ${load.node} for ${load.seconds.toFixed(1)} s, `
      + `${Math.round((load.progress || 0) * 100)}% (${load.waiters} waiting)` })));
}

function renderCatalogue(catalogue) {
  $("catalogue").tBodies[0].replaceChildren(...catalogue.map((m) => {
    const actions = el("td", { class: "actions" });
    if (m.configured !== false) {
      if (m.state === "available") actions.append(button("load", m.id, null, "Load"));
      // An unservable model (no node can ever hold it) offers nothing to do: its reason shows.
      if (m.state !== "unservable" || m.pinned) actions.append(m.pinned
        ? button("unpin", m.id, null, "Unpin") : button("pin", m.id, null, "Pin"));
    }
    return el("tr", { "data-model": m.id },
      el("td", { text: m.id }),
      el("td", { class: `state-${m.state}`, text: m.state, title: m.reason || "" }),
      el("td", { text: (m.loaded_on || []).join(", ") || m.reason || "–" }),
      el("td", { text: String(m.n_ctx ?? "") }),
      el("td", { text: String(m.priority ?? "") }),
      el("td", { text: m.pinned ? "yes" : "" }),
      actions);
  }));
}

function render(data) {
  render.last = data;
  const { fleet, catalogue } = data;
  const up = fleet.nodes.filter((n) => n.up).length;
  $("summary").textContent = `${up}/${fleet.nodes.length} nodes up · routing ${fleet.routing}`
    + ` · eviction ${fleet.eviction}`;
  const traffic = fleet.traffic || {};
  $("rps").textContent = traffic.requests_per_second?.toFixed(2) ?? "–";
  $("tps-out").textContent = rate(traffic.output_tokens_per_second);
  $("tps-in").textContent = rate(traffic.input_tokens_per_second);
  $("requests-total").textContent = String(traffic.requests_total ?? "–");
  renderNodes(fleet.nodes);
  renderLoaded(fleet, catalogue);
  renderCatalogue(catalogue);
}

const seconds = (value) => (value === undefined || value === null ? "–"
  : `${value.toFixed(2)} s`);

function renderActivity(requests) {
  $("activity").tBodies[0].replaceChildren(...requests.map((r) => el("tr", {
    "data-request-id": r.request_id, "data-model": r.model },
  el("td", { text: new Date(r.finished_at * 1000).toLocaleTimeString() }),
  el("td", { text: r.model }),
  el("td", { text: r.node || "–" }),
  el("td", { text: r.dialect }),
  el("td", { class: r.status < 400 ? "status-ok" : "status-bad", "data-testid": "status",
    text: String(r.status) }),
  el("td", { text: String(r.prompt_tokens) }),
  el("td", { "data-testid": "tokens-out", text: String(r.completion_tokens) }),
  el("td", { text: seconds(r.ttft_seconds) }),
  el("td", { text: seconds(r.duration_seconds) }),
  el("td", { class: "muted", text: r.request_id }))));
  $("no-activity").hidden = requests.length > 0;
}

async function refresh() {
  clearTimeout(timer);
  try {
    const [fleet, models, activity] = await Promise.all([api("admin/fleet"),
      api("v1/models"), api("admin/requests?limit=50")]);
    render({ fleet, catalogue: models.data });
    renderActivity(activity.requests);
    renderModelChoice(models.data);
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.ready = "true";
  } catch (error) {
    if (error.status === 401 || error.status === 403) {
      askForKey(key() ? `That key was refused (${error.message}).`
        : "This gateway needs an admin key.");
    } else {
      say(`cannot read the fleet: ${error.message}`, true);
    }
  }
  timer = setTimeout(refresh, INTERVAL_MS);
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("key-input").value.trim());
  $("key-input").value = "";
  $("key-form").hidden = true;
  say("");
  refresh();
});
$("key-forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  askForKey("Key forgotten.");
});
$("key-button").addEventListener("click", () => askForKey("Enter the gateway's admin key."));

const VIEWS = ["fleet", "activity", "playground"];

function showView() {
  const name = location.hash.slice(1);
  const shown = VIEWS.includes(name) ? name : "fleet";
  for (const view of document.querySelectorAll("main[data-view]")) {
    view.hidden = view.dataset.view !== shown;
  }
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("current", link.dataset.view === shown);
  }
}
window.addEventListener("hashchange", showView);
showView();

refresh();
