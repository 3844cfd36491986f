// Switchyard console: plain JavaScript, no framework, no build step.
// Every action is a call to the admin API (docs/admin-api.md) with the
// session cookie; the API enforces the role, the page only hides what the
// role cannot do. Text from the server is always set as text, never as
// markup. The CSRF token lives in this module's memory only.

const state = { me: null };
const main = () => document.getElementById("main");

class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// An element: h("a", {href: "#/x", onclick: f}, "text", child, ...).
function h(tag, attrs = {}, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids.flat()) {
    if (kid === undefined || kid === null || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    opts.headers["content-type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  if (method !== "GET" && state.me) opts.headers["x-csrf-token"] = state.me.csrf;
  const r = await fetch(path, opts);
  const text = await r.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = { error: { message: text } }; }
  }
  if (!r.ok) {
    const err = new ApiError(r.status, (data && data.error && data.error.message) || r.statusText,
      data && data.error && data.error.code);
    if (r.status === 401 && path !== "/console/api/session") {
      state.me = null;
      showLogin("Your session ended; sign in again.");
    }
    throw err;
  }
  return data;
}

function setPage(title, ...content) {
  const m = main();
  m.replaceChildren(h("h1", {}, title), ...content);
  document.title = `${title} · Switchyard console`;
}

function errorBox(e) {
  return h("p", { class: "error", role: "alert" }, e instanceof ApiError ? `${e.message} (${e.status})` : String(e));
}

function table(columns, rows, opts = {}) {
  const head = h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : undefined }, c.title)));
  const body = rows.map((r) => h("tr", opts.rowAttrs ? opts.rowAttrs(r) : {},
    columns.map((c) => {
      const v = c.value(r);
      return h("td", { class: c.num ? "num" : undefined }, v instanceof Node ? v : (v === null || v === undefined ? "" : String(v)));
    })));
  const empty = rows.length ? [] : [h("tr", { class: "empty-row" }, h("td", { class: "empty", colspan: columns.length }, "Nothing here yet."))];
  return h("div", { class: "table-wrap" }, h("table", { id: opts.id },
    opts.caption ? h("caption", { class: "status" }, opts.caption) : null,
    h("thead", {}, head), h("tbody", {}, body, empty)));
}

function when(secs) {
  if (!secs) return "";
  return new Date(secs * 1000).toISOString().replace("T", " ").slice(0, 19);
}

function usd(s) {
  const n = Number(s || 0);
  return n === 0 ? "0" : n < 0.01 ? n.toPrecision(3) : n.toFixed(4);
}

// ---------- sign in and out ----------

function showLogin(message) {
  document.getElementById("top").hidden = true;
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "off", required: true });
  const status = h("p", { class: "error", role: "alert", id: "login-error" }, message || "");
  const form = h("form", { class: "login", id: "login", onsubmit: async (ev) => {
    ev.preventDefault();
    status.textContent = "";
    try {
      state.me = await api("POST", "/console/api/session", { token: input.value });
      input.value = "";
      start();
    } catch (e) {
      status.textContent = e.message;
    }
  } },
  h("h1", {}, "Switchyard console"),
  h("label", {}, "Admin token", input),
  h("button", { type: "submit", class: "primary", id: "sign-in" }, "Sign in"),
  status,
  h("p", { class: "status" }, "The token is traded for a session cookie; it is not kept in this browser."));
  main().replaceChildren(form);
  document.title = "Sign in · Switchyard console";
  input.focus();
}

async function signOut() {
  try { await api("DELETE", "/console/api/session"); } catch { /* ended already */ }
  state.me = null;
  showLogin("Signed out.");
}

// ---------- navigation ----------

const PAGES = [
  { path: "overview", title: "Overview", show: () => true },
  { path: "tenants", title: "Tenants", show: () => true },
  { path: "routing", title: "Routing", show: (me) => !me.org_id },
  { path: "requests", title: "Requests", show: (me) => me.can.usage },
  { path: "batches", title: "Batches", show: (me) => !me.org_id },
  { path: "access", title: "Access", show: (me) => me.can.credentials || me.can.admin_tokens },
  { path: "audit", title: "Audit log", show: (me) => me.can.audit },
];

function drawNav(current) {
  const nav = document.getElementById("nav");
  nav.replaceChildren(...PAGES.filter((p) => p.show(state.me)).map((p) =>
    h("a", { href: `#/${p.path}`, "aria-current": p.path === current ? "page" : undefined }, p.title)));
}

async function route() {
  if (!state.me) return;
  const parts = (location.hash.replace(/^#\/?/, "") || "overview").split("/").map(decodeURIComponent);
  drawNav(parts[0]);
  try {
    switch (parts[0]) {
      case "tenants":
        if (parts[1] === "org" && parts[2]) await orgPage(parts[2]);
        else if (parts[1] === "project" && parts[2]) await projectPage(parts[2]);
        else if (parts[1] === "key" && parts[2]) await keyPage(parts[2]);
        else await tenantsPage();
        break;
      case "requests":
        if (parts[1]) await requestPage(parts[1]);
        else await requestsPage();
        break;
      case "audit": await auditPage(); break;
      case "routing": await routingPage(); break;
      case "batches": await batchesPage(); break;
      case "access": await accessPage(); break;
      default: await overviewPage();
    }
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) main().append(errorBox(e));
  }
  main().focus();
}

async function start() {
  document.getElementById("top").hidden = false;
  const me = state.me;
  document.getElementById("who").textContent = `${me.name} (${me.role}${me.org_id ? ", one org" : ""})`;
  await route();
}

// ---------- overview ----------

// A line chart of one or two series over the window [x0, x1], as SVG; a
// series of one or two points is marked, so that a lone bucket shows.
function chart(title, points, series, unit, [x0, x1]) {
  const W = 320, H = 140, L = 44, B = 18, T = 8, R = 8;
  const values = series.flatMap((s) => points.map(s.value)).filter((v) => v !== null && v !== undefined && !Number.isNaN(v));
  const max = Math.max(1e-9, ...values);
  const sx = (t) => L + (x1 === x0 ? (W - L - R) / 2 : ((t - x0) / (x1 - x0)) * (W - L - R));
  const sy = (v) => H - B - (v / max) * (H - B - T);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", title);
  const el = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    svg.append(e);
    return e;
  };
  el("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B });
  el("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B });
  el("text", { x: 2, y: T + 8 }, fmt(max, unit));
  el("text", { x: 2, y: H - B }, "0");
  const clock = (t) => new Date(t * 1000).toISOString().slice(x1 - x0 > 86400 ? 5 : 11, x1 - x0 > 86400 ? 10 : 16);
  el("text", { x: L, y: H - 4 }, clock(x0));
  el("text", { x: W - R - 28, y: H - 4 }, clock(x1));
  series.forEach((s, i) => {
    const pts = points.filter((p) => s.value(p) !== null && s.value(p) !== undefined)
      .map((p) => [sx(p.t).toFixed(1), sy(s.value(p)).toFixed(1)]);
    el("polyline", { class: `s${i}`, points: pts.map((p) => p.join(",")).join(" ") });
    if (pts.length < 3) for (const [x, y] of pts) el("circle", { class: `s${i}`, cx: x, cy: y, r: 3 });
  });
  const legend = h("div", { class: "legend" }, series.map((s, i) => `${i ? " · " : ""}${i ? "dashed" : "solid"}: ${s.name}`));
  return h("figure", { class: "chart" }, h("figcaption", {}, title), svg, legend);
}

function fmt(v, unit) {
  if (unit === "%") return `${(v * 100).toFixed(1)}%`;
  if (unit === "$") return `$${v < 1 ? v.toPrecision(2) : v.toFixed(2)}`;
  return `${v < 10 ? v.toPrecision(2) : Math.round(v)}${unit || ""}`;
}

async function overviewPage() {
  const windowSel = h("select", { id: "window", "aria-label": "Window" },
    ["15m", "1h", "6h", "24h", "7d"].map((w) => h("option", { value: w, selected: w === (state.window || "1h") }, w)));
  const body = h("div", { id: "overview" }, h("p", { class: "status" }, "Loading…"));
  windowSel.addEventListener("change", () => { state.window = windowSel.value; overviewPage(); });
  setPage("Overview", h("form", { class: "inline", onsubmit: (e) => e.preventDefault() },
    h("label", {}, "Window", windowSel)), body);
  const v = await api("GET", `/admin/v1/overview?window=${encodeURIComponent(state.window || "1h")}`);
  const b = v.bucket_seconds;
  const pts = v.series;
  // Counts and spend are 0 in a bucket without traffic; latencies have no value there.
  const byT = new Map(pts.map((p) => [p.t, p]));
  const every = [];
  for (let t = v.start; t < v.end; t += b) every.push(byT.get(t) || { t, requests: 0, attempts: 0, failed: 0, billed: "0" });
  const total = pts.reduce((a, p) => a + p.requests, 0);
  const span = [v.start, v.end - b];
  body.replaceChildren(
    h("p", { class: "status", id: "overview-total" }, `${total} request${total === 1 ? "" : "s"} in the last ${v.window} (buckets of ${b} s).`),
    h("div", { class: "charts" },
      chart("Requests per second", every, [{ name: "requests/s", value: (p) => p.requests / b }], "/s", span),
      chart("Failed attempts", every, [{ name: "failed / attempts", value: (p) => (p.attempts ? p.failed / p.attempts : 0) }], "%", span),
      chart("Latency (ms)", pts, [{ name: "p50", value: (p) => p.latency_p50_ms }, { name: "p99", value: (p) => p.latency_p99_ms }], " ms", span),
      chart("Time to first token (ms)", pts, [{ name: "p50", value: (p) => p.ttft_p50_ms }, { name: "p99", value: (p) => p.ttft_p99_ms }], " ms", span),
      chart("Queue wait: what the hop added (ms)", pts, [{ name: "p50", value: (p) => p.queue_p50_ms }, { name: "p99", value: (p) => p.queue_p99_ms }], " ms", span),
      chart("Spend per hour (USD)", every, [{ name: "billed/h", value: (p) => Number(p.billed) * 3600 / b }], "$", span)),
    h("h2", {}, "By provider and model"),
    table([
      { title: "Provider", value: (t) => t.provider },
      { title: "Model", value: (t) => t.model },
      { title: "Attempts", value: (t) => t.attempts, num: true },
      { title: "Failed", value: (t) => t.failed, num: true },
      { title: "p50 ms", value: (t) => Math.round(t.latency_p50_ms), num: true },
      { title: "p99 ms", value: (t) => Math.round(t.latency_p99_ms), num: true },
      { title: "Billed USD", value: (t) => usd(t.billed), num: true },
    ], v.targets, { id: "targets" }));
}

// ---------- tenants ----------

function statusBadge(s) {
  return h("span", { class: `badge ${s === "active" ? "good" : "bad"}` }, s);
}

async function tenantsPage() {
  const orgs = await api("GET", "/admin/v1/orgs?limit=100");
  const content = [];
  if (state.me.can.tenants && !state.me.org_id) {
    const name = h("input", { id: "new-org-name", required: true, maxlength: 200 });
    const status = h("span", { class: "status", role: "status" });
    content.push(h("form", { class: "inline", id: "create-org-form", onsubmit: async (ev) => {
      ev.preventDefault();
      try {
        const org = await api("POST", "/admin/v1/orgs", { name: name.value });
        location.hash = `#/tenants/org/${org.id}`;
      } catch (e) { status.textContent = e.message; }
    } }, h("label", {}, "New org", name), h("button", { type: "submit", class: "primary", id: "create-org" }, "Create org"), status));
  }
  content.push(table([
    { title: "Org", value: (o) => h("a", { href: `#/tenants/org/${o.id}` }, o.name) },
    { title: "Status", value: (o) => statusBadge(o.status) },
    { title: "Id", value: (o) => o.id },
  ], orgs.data, { id: "orgs" }));
  setPage("Tenants", ...content);
}

function csv(rows, columns) {
  const cell = (v) => {
    let s = v === null || v === undefined ? "" : String(v);
    // A tenant's text that a spreadsheet would run as a formula is kept as text.
    if (/^[=+\-@\t\r]/.test(s) && !/^-?\d+(\.\d+)?$/.test(s)) s = `'${s}`;
    return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  return [columns.join(","), ...rows.map((r) => columns.map((c) => cell(r[c])).join(","))].join("\n") + "\n";
}

function download(name, text) {
  const url = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
  const a = h("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// Usage of the last 30 days: billed per day as a chart, and a table
// grouped by model, day, key or a tag's value, with CSV export.
async function usageSection(params, name) {
  const box = h("section", { id: "usage" }, h("h2", {}, "Usage, last 30 days"));
  const groupSel = h("select", { id: "usage-group", "aria-label": "Group by" },
    ["model", "day", "key", "project"].map((g) => h("option", { value: g }, g)));
  const tagKey = h("input", { id: "usage-tag", placeholder: "or a tag key", maxlength: 64, size: 12 });
  const out = h("div", {});
  const cols = ["group", "requests", "attempts", "input_tokens", "output_tokens", "cost", "billed"];
  async function load() {
    const group = tagKey.value.trim() ? `tag:${tagKey.value.trim()}` : groupSel.value;
    try {
      const [u, days] = await Promise.all([
        api("GET", `/admin/v1/usage?${params}&group_by=${encodeURIComponent(group)}`),
        api("GET", `/admin/v1/usage?${params}&group_by=day`),
      ]);
      const now = Math.floor(Date.now() / 1000);
      const points = days.data.map((d) => ({ t: Date.parse(`${d.group}T00:00:00Z`) / 1000, billed: Number(d.billed) }));
      out.replaceChildren(
        h("div", { class: "charts" }, chart("Billed per day (USD)", points, [{ name: "billed", value: (p) => p.billed }], "$", [now - 30 * 86400, now])),
        table([
          { title: group.startsWith("tag:") ? group : group[0].toUpperCase() + group.slice(1), value: (g) => g.group || "(none)" },
          { title: "Requests", value: (g) => g.requests, num: true },
          { title: "Input tokens", value: (g) => g.input_tokens, num: true },
          { title: "Output tokens", value: (g) => g.output_tokens, num: true },
          { title: "Billed USD", value: (g) => usd(g.billed), num: true },
        ], u.data, { id: "usage-table" }),
        h("button", { type: "button", id: "export-csv", onclick: () => download(`${name}-usage-by-${group.replace(":", "-")}.csv`, csv(u.data, cols)) }, "Export CSV"));
    } catch (e) {
      out.replaceChildren(errorBox(e));
    }
  }
  box.append(h("form", { class: "inline", onsubmit: (ev) => { ev.preventDefault(); load(); } },
    h("label", {}, "Group by", groupSel), h("label", {}, "Tag", tagKey), h("button", { type: "submit" }, "Show")), out);
  await load();
  return box;
}

// Rate limits and a budget of an org, project or key (PATCH `path`).
function limitsForm(obj, path, reload, allowed) {
  const l = obj.limits || {};
  const b = obj.budget || {};
  const field = (id, label, value) => h("label", {}, label, h("input", { id, value: value ?? "", size: 10, inputmode: "decimal" }));
  const period = h("select", { id: "budget-period" }, ["month", "day", "none"].map((p) => h("option", { value: p, selected: (b.period || "month") === p }, p)));
  const status = h("span", { class: "status", role: "status" });
  const facts = `Limits: ${["rpm", "tpm", "concurrency"].map((k) => `${k} ${l[k] ?? "—"}`).join(", ")}; budget: ${obj.budget ? `$${b.usd} per ${b.period}` : "none"}.`;
  const box = h("section", { id: "limits" }, h("h2", {}, "Limits and budget"), h("p", { id: "limits-now" }, facts));
  if (!allowed) return box;
  const form = h("form", { class: "inline", id: "limits-form", onsubmit: async (ev) => {
    ev.preventDefault();
    const num = (id) => { const v = document.getElementById(id).value.trim(); return v === "" ? undefined : Number(v); };
    const limits = {};
    for (const k of ["rpm", "tpm", "concurrency"]) { const v = num(`limit-${k}`); if (v !== undefined) limits[k] = v; }
    const usdText = document.getElementById("budget-usd").value.trim();
    const body = { limits, budget: usdText ? { usd: usdText, period: period.value } : null };
    try {
      await api("PATCH", path, body);
      await reload();
    } catch (e) { status.textContent = e.message; }
  } }, field("limit-rpm", "Requests/min", l.rpm), field("limit-tpm", "Tokens/min", l.tpm),
  field("limit-concurrency", "In flight", l.concurrency), field("budget-usd", "Budget USD", b.usd),
  h("label", {}, "Per", period), h("button", { type: "submit", id: "save-limits" }, "Save"), status);
  box.append(form);
  return box;
}

// An org's prepaid balance, crediting (deployment billing roles), top-ups
// and a month's invoice.
async function billingSection(org) {
  const box = h("section", { id: "billing" }, h("h2", {}, "Balance and invoices"));
  try {
    const bal = await api("GET", `/admin/v1/orgs/${org.id}/balance`);
    box.append(h("p", { id: "balance" }, `Balance $${bal.balance_usd} (credited $${bal.credited_usd}, debited $${bal.debited_usd})${bal.prepaid ? ", prepaid" : ""}.`));
  } catch (e) { box.append(errorBox(e)); }
  const status = h("span", { class: "status", role: "status" });
  if (state.me.can.balances && !state.me.org_id) {
    const amount = h("input", { id: "credit-usd", size: 8, inputmode: "decimal", required: true });
    const ref = h("input", { id: "credit-ref", size: 16, required: true, maxlength: 200 });
    box.append(h("form", { class: "inline", id: "credit-form", onsubmit: async (ev) => {
      ev.preventDefault();
      try {
        await api("POST", `/admin/v1/orgs/${org.id}/credits`, { usd: amount.value, ref: ref.value });
        await orgPage(org.id);
      } catch (e) { status.textContent = e.message; }
    } }, h("label", {}, "Credit USD", amount), h("label", {}, "Reference (once per payment)", ref),
    h("button", { type: "submit", id: "credit" }, "Credit")));
  }
  if (state.me.can.balances) {
    const cents = h("input", { id: "topup-amount", size: 8, inputmode: "decimal", required: true });
    const via = h("select", { id: "topup-provider" },
      h("option", { value: "stripe" }, "Stripe, USD"), h("option", { value: "yookassa" }, "YooKassa, RUB"));
    box.append(h("form", { class: "inline", id: "topup-form", onsubmit: async (ev) => {
      ev.preventDefault();
      const currency = via.value === "yookassa" ? "rub" : "usd";
      try {
        const order = await api("POST", `/admin/v1/orgs/${org.id}/topups`, { provider: via.value, amount: Math.round(Number(cents.value) * 100), currency });
        status.replaceChildren("Pay here: ", h("a", { href: order.payment_url, rel: "noopener noreferrer", target: "_blank" }, order.payment_url));
      } catch (e) { status.textContent = e.message; }
    } }, h("label", {}, "Top up", cents), h("label", {}, "Through", via), h("button", { type: "submit", id: "topup" }, "Top up")));
  }
  const month = h("input", { id: "invoice-period", type: "month", value: new Date().toISOString().slice(0, 7), required: true });
  const inv = h("div", { id: "invoice" });
  box.append(h("form", { class: "inline", id: "invoice-form", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      const v = await api("GET", `/admin/v1/orgs/${org.id}/invoices/${month.value}`);
      inv.replaceChildren(
        h("p", {}, `${v.period}: ${v.totals.requests} requests, billed $${v.totals.billed_usd}; balance $${v.balance.start_usd} → $${v.balance.end_usd}.`),
        table([
          { title: "Project", value: (l) => l.project_name },
          { title: "Model", value: (l) => `${l.provider}/${l.model}` },
          { title: "Requests", value: (l) => l.requests, num: true },
          { title: "Billed USD", value: (l) => l.billed_usd, num: true },
        ], v.lines, { id: "invoice-lines" }),
        h("button", { type: "button", onclick: async () => {
          const r = await fetch(`/admin/v1/orgs/${org.id}/invoices/${month.value}?format=csv`, { credentials: "same-origin" });
          if (!r.ok) { inv.append(errorBox(new ApiError(r.status, "The invoice's CSV could not be read."))); return; }
          download(`invoice-${month.value}.csv`, await r.text());
        } }, "Download CSV"));
    } catch (e) { inv.replaceChildren(errorBox(e)); }
  } }, h("label", {}, "Invoice for", month), h("button", { type: "submit", id: "show-invoice" }, "Show"), status), inv);
  return box;
}

async function orgPage(id) {
  const org = await api("GET", `/admin/v1/orgs/${encodeURIComponent(id)}`);
  const projects = await api("GET", `/admin/v1/projects?org_id=${encodeURIComponent(id)}&limit=100`);
  const content = [h("p", {}, "Status: ", statusBadge(org.status), ` · id ${org.id}`)];
  if (state.me.can.tenants) {
    const name = h("input", { id: "new-project-name", required: true, maxlength: 200 });
    const status = h("span", { class: "status", role: "status" });
    content.push(h("form", { class: "inline", id: "create-project-form", onsubmit: async (ev) => {
      ev.preventDefault();
      try {
        const p = await api("POST", "/admin/v1/projects", { org_id: id, name: name.value });
        location.hash = `#/tenants/project/${p.id}`;
      } catch (e) { status.textContent = e.message; }
    } }, h("label", {}, "New project", name), h("button", { type: "submit", class: "primary", id: "create-project" }, "Create project"), status));
  }
  content.push(h("h2", {}, "Projects"), table([
    { title: "Project", value: (p) => h("a", { href: `#/tenants/project/${p.id}` }, p.name) },
    { title: "Status", value: (p) => statusBadge(p.status) },
    { title: "Id", value: (p) => p.id },
  ], projects.data, { id: "projects" }));
  content.push(limitsForm(org, `/admin/v1/orgs/${encodeURIComponent(id)}`, () => orgPage(id), state.me.can.tenants && !state.me.org_id));
  content.push(await billingSection(org));
  if (state.me.can.usage) content.push(await usageSection(`org_id=${encodeURIComponent(id)}`, "org"));
  setPage(`Org: ${org.name}`, h("p", {}, h("a", { href: "#/tenants" }, "← Tenants")), ...content);
}

async function projectPage(id) {
  const project = await api("GET", `/admin/v1/projects/${encodeURIComponent(id)}`);
  const keys = await api("GET", `/admin/v1/keys?project_id=${encodeURIComponent(id)}&limit=100`);
  const content = [h("p", {}, h("a", { href: `#/tenants/org/${project.org_id}` }, "← Org"), ` · project id ${project.id}`)];
  const secretBox = h("div", { id: "secret-box" });
  if (state.me.can.keys) {
    const name = h("input", { id: "new-key-name", required: true, maxlength: 200 });
    const models = h("input", { id: "new-key-models", placeholder: "all models", maxlength: 2000 });
    const status = h("span", { class: "status", role: "status" });
    content.push(h("form", { class: "inline", id: "create-key-form", onsubmit: async (ev) => {
      ev.preventDefault();
      const body = { project_id: id, name: name.value };
      const list = models.value.split(",").map((m) => m.trim()).filter(Boolean);
      if (list.length) body.scopes = { models: list };
      try {
        const k = await api("POST", "/admin/v1/keys", body);
        await projectPage(id);
        showSecret(k.key);
      } catch (e) { status.textContent = e.message; }
    } }, h("label", {}, "New key", name), h("label", {}, "Models (comma-separated)", models),
    h("button", { type: "submit", class: "primary", id: "create-key" }, "Create key"), status));
  }
  content.push(secretBox, h("h2", {}, "Keys"), table([
    { title: "Key", value: (k) => h("a", { href: `#/tenants/key/${k.id}` }, k.name) },
    { title: "Prefix", value: (k) => k.prefix },
    { title: "Status", value: (k) => statusBadge(k.status) },
    { title: "Models", value: (k) => (k.scopes && k.scopes.models ? k.scopes.models.join(", ") : "all") },
    { title: "Created", value: (k) => when(k.created_at) },
    { title: "", value: (k) => (state.me.can.keys && k.status === "active" ? revokeButton(k, id) : "") },
  ], keys.data, { id: "keys", rowAttrs: (k) => ({ "data-key-id": k.id }) }));
  content.push(limitsForm(project, `/admin/v1/projects/${encodeURIComponent(id)}`, () => projectPage(id), state.me.can.tenants));
  if (state.me.can.usage) content.push(await usageSection(`project_id=${encodeURIComponent(id)}`, "project"));
  setPage(`Project: ${project.name}`, ...content);
}

// One key: its settings, scopes and tags edited, rotation with grace,
// revocation, limits and budget, usage.
async function keyPage(id) {
  const k = await api("GET", `/admin/v1/keys/${encodeURIComponent(id)}`);
  const models = k.scopes && k.scopes.models ? k.scopes.models.join(", ") : "";
  const tags = Object.entries(k.tags || {}).map(([a, b]) => `${a}=${b}`).join(", ");
  const facts = [["Status", k.status], ["Prefix", k.prefix], ["Models", models || "all"], ["Default tags", tags || "none"],
    ["Expires", k.expires_at ? when(k.expires_at) : "never"],
    ["Previous secret valid until", k.previous_valid_until ? when(k.previous_valid_until) : "—"], ["Created", when(k.created_at)]];
  const content = [h("p", {}, h("a", { href: `#/tenants/project/${k.project_id}` }, "← Project"), ` · key id ${k.id}`),
    h("dl", { class: "facts", id: "key-facts" }, facts.flatMap(([a, b]) => [h("dt", {}, a), h("dd", {}, String(b))])),
    h("div", { id: "secret-box" })];
  if (state.me.can.keys && k.status === "active") {
    const status = h("span", { class: "status", role: "status" });
    const scopes = h("input", { id: "key-models", value: models, size: 30, placeholder: "all models" });
    const tagInput = h("input", { id: "key-tags", value: tags, size: 30, placeholder: "team=search, tier=free" });
    content.push(h("form", { class: "inline", id: "key-form", onsubmit: async (ev) => {
      ev.preventDefault();
      const list = scopes.value.split(",").map((m) => m.trim()).filter(Boolean);
      const tagMap = {};
      for (const pair of tagInput.value.split(",").map((t) => t.trim()).filter(Boolean)) {
        const at = pair.indexOf("=");
        if (at < 1) { status.textContent = `Tag '${pair}' is not key=value.`; return; }
        tagMap[pair.slice(0, at).trim()] = pair.slice(at + 1).trim();
      }
      try {
        await api("PATCH", `/admin/v1/keys/${encodeURIComponent(id)}`, { scopes: list.length ? { models: list } : null, tags: tagMap });
        await keyPage(id);
      } catch (e) { status.textContent = e.message; }
    } }, h("label", {}, "Models (comma-separated)", scopes), h("label", {}, "Default tags", tagInput),
    h("button", { type: "submit", id: "save-key" }, "Save"), status));
    const grace = h("input", { id: "rotate-grace", value: "3600", size: 8, inputmode: "numeric" });
    const rotate = confirmButton("Rotate", "Confirm: rotate", { id: "rotate" }, async () => {
      const r = await api("POST", `/admin/v1/keys/${encodeURIComponent(id)}/rotate`, { grace_seconds: Number(grace.value) });
      await keyPage(id);
      showSecret(r.key);
    });
    const revoke = confirmButton("Revoke", "Confirm revoke", { id: "revoke-key" }, async () => {
      await api("DELETE", `/admin/v1/keys/${encodeURIComponent(id)}`);
      await keyPage(id);
    });
    content.push(h("div", { class: "inline" }, h("label", {}, "Grace for the old secret (s) ", grace), rotate, revoke));
  }
  content.push(limitsForm(k, `/admin/v1/keys/${encodeURIComponent(id)}`, () => keyPage(id), state.me.can.keys));
  if (state.me.can.usage) content.push(await usageSection(`key_id=${encodeURIComponent(id)}`, "key"));
  setPage(`Key: ${k.name}`, ...content);
}

function showSecret(secret) {
  const status = h("span", { class: "status", role: "status", id: "copy-status" });
  const code = h("code", { id: "new-key-secret" }, secret);
  document.getElementById("secret-box").replaceChildren(h("div", { class: "secret" },
    h("strong", {}, "New key (shown once: store it now):"), code,
    h("button", { type: "button", id: "copy-secret", onclick: async () => {
      try {
        await navigator.clipboard.writeText(secret);
        status.textContent = "Copied.";
      } catch {
        // No clipboard access: select the text for the user to copy.
        const range = document.createRange();
        range.selectNodeContents(code);
        const sel = window.getSelection();
        sel.removeAllRanges();
        sel.addRange(range);
        status.textContent = "Selected: press Ctrl+C to copy.";
      }
    } }, "Copy"), status));
}

function revokeButton(k, projectId) {
  const b = h("button", { type: "button", class: "revoke", "data-key-id": k.id }, "Revoke");
  b.addEventListener("click", async () => {
    if (b.dataset.armed !== "1") {
      b.dataset.armed = "1";
      b.textContent = "Confirm revoke";
      b.classList.add("danger");
      return;
    }
    try {
      await api("DELETE", `/admin/v1/keys/${encodeURIComponent(k.id)}`);
      await projectPage(projectId);
    } catch (e) { main().append(errorBox(e)); }
  });
  return b;
}

// ---------- providers and routing ----------

// A button that asks once more before it acts (the first click arms it).
function confirmButton(label, confirmLabel, attrs, act) {
  const b = h("button", { type: "button", ...attrs }, label);
  b.addEventListener("click", async () => {
    if (b.dataset.armed !== "1") {
      b.dataset.armed = "1";
      b.textContent = confirmLabel;
      b.classList.add("danger");
      return;
    }
    b.disabled = true;
    try { await act(); } catch (e) { main().append(errorBox(e)); b.disabled = false; }
  });
  return b;
}

async function routingPage() {
  const [live, rt] = await Promise.all([api("GET", "/admin/v1/targets"), api("GET", "/admin/v1/routing")]);
  // Every configured target, with what is known live of it.
  const seen = new Map();
  const add = (p, m) => { const k = `${p}/${m}`; if (!seen.has(k)) seen.set(k, { provider: p, model: m }); };
  for (const m of rt.models) for (const t of m.targets) add(t.provider, t.model);
  for (const r of rt.routers) for (const route of r.routes) for (const t of route.targets) add(t.provider, t.model);
  for (const row of live.targets) add(row.provider, row.model);
  const rows = [...seen.values()].sort((a, b) => `${a.provider}/${a.model}`.localeCompare(`${b.provider}/${b.model}`))
    .map((t) => ({ ...t, live: live.targets.find((r) => r.provider === t.provider && r.model === t.model) }));
  const load = new Map(live.providers.map((p) => [p.provider, p.load]));
  const ms = (v) => (v === null || v === undefined ? "—" : Math.round(v));
  const force = (t, state) => async () => {
    await api("PUT", "/admin/v1/targets", { provider: t.provider, model: t.model, state });
    await routingPage();
  };
  const actions = (t) => {
    if (!state.me.can.routing) return "";
    const forced = t.live ? t.live.forced : null;
    const attrs = (what) => ({ class: "force", "data-target": `${t.provider}/${t.model}`, "data-state": what });
    return h("span", {},
      forced !== false ? confirmButton("Take out", "Confirm: take out", attrs("off"), force(t, "off")) : null,
      forced !== true ? confirmButton("Force in", "Confirm: force in", attrs("on"), force(t, "on")) : null,
      forced !== null && forced !== undefined ? confirmButton("Back to health", "Confirm: back to health", attrs("auto"), force(t, "auto")) : null);
  };
  const stateOf = (t) => {
    if (!t.live) return h("span", { class: "badge" }, "no calls yet");
    if (t.live.forced === false) return h("span", { class: "badge bad" }, "taken out");
    if (t.live.forced === true) return h("span", { class: "badge good" }, "forced in");
    return h("span", { class: `badge ${t.live.healthy ? "good" : "bad"}` }, t.live.healthy ? "healthy" : "breaker open");
  };
  const targets = table([
    { title: "Target", value: (t) => `${t.provider}/${t.model}` },
    { title: "State", value: stateOf },
    { title: "TTFT ms", value: (t) => ms(t.live && t.live.ttft_ms), num: true },
    { title: "Call ms", value: (t) => ms(t.live && t.live.duration_ms), num: true },
    { title: "OK", value: (t) => (t.live ? t.live.ok : 0), num: true },
    { title: "Failed", value: (t) => (t.live ? t.live.failed : 0), num: true },
    { title: "Last error", value: (t) => (t.live && t.live.last_error) || "" },
    { title: "Load", value: (t) => { const l = load.get(t.provider); return l ? `${l.in_flight}/${l.cap} in flight, ${l.queued} queued` : "—"; } },
    { title: "", value: actions },
  ], rows, { id: "live-targets", rowAttrs: (t) => ({ "data-target": `${t.provider}/${t.model}` }) });
  const models = table([
    { title: "Model", value: (m) => m.name },
    { title: "Targets, in order", value: (m) => m.targets.map((t) => `${t.provider}/${t.model}`).join(" → ") },
    { title: "Mid-stream", value: (m) => m.mid_stream },
  ], rt.models, { id: "routing-models" });
  const routers = rt.routers.map((r) => h("section", {}, h("h3", {}, r.name), table([
    { title: "Route", value: (x) => x.name },
    { title: "Kinds", value: (x) => x.kinds.join(", ") },
    { title: "Classes", value: (x) => x.classes.join(", ") || "any" },
    { title: "Tags", value: (x) => x.tags.join(", ") || "any" },
    { title: "Strategy", value: (x) => x.strategy },
    { title: "Targets", value: (x) => x.targets.map((t) => `${t.provider}/${t.model}${x.strategy === "weighted" ? ` ×${t.weight}` : ""}`).join(", ") },
  ], r.routes)));
  setPage("Providers and routing",
    h("h2", {}, "Targets"), targets,
    h("h2", {}, "Explain a request"), explainForm(rt),
    h("h2", {}, "Models"), models,
    h("h2", {}, "Routers"), ...routers);
}

function explainForm(rt) {
  const first = rt.routers[0] ? rt.routers[0].name : (rt.models[0] ? rt.models[0].name : "gpt-4o-mini");
  const apiSel = h("select", { id: "explain-api", name: "api" },
    ["chat_completions", "messages", "responses", "embeddings", "rerank", "images", "speech"].map((a) => h("option", { value: a }, a)));
  const body = h("textarea", { id: "explain-body", rows: 6, cols: 60, spellcheck: "false" },
    JSON.stringify({ model: first, messages: [{ role: "user", content: "Write a Python function that merges two sorted lists." }] }, null, 2));
  const out = h("div", { id: "explain-result" });
  const form = h("form", { id: "explain", onsubmit: async (ev) => {
    ev.preventDefault();
    let parsed;
    try { parsed = JSON.parse(body.value); } catch (e) { out.replaceChildren(errorBox(`Not JSON: ${e.message}`)); return; }
    try {
      const v = await api("POST", `/admin/v1/route/explain?api=${encodeURIComponent(apiSel.value)}`, parsed);
      const facts = [["Kind", v.kind], ["Class", v.class || "—"], ["Route", v.route || "—"], ["Strategy", v.strategy],
        ["Chosen", v.chosen ? `${v.chosen.provider}/${v.chosen.model}` : "none can serve now"],
        ["Fallbacks", (v.fallback || []).map((t) => `${t.provider}/${t.model}`).join(" → ") || "—"]];
      out.replaceChildren(
        h("dl", { class: "facts" }, facts.flatMap(([k, val]) => [h("dt", {}, k), h("dd", {}, String(val))])),
        v.candidates ? table([
          { title: "Candidate", value: (c) => `${c.provider}/${c.model}` },
          { title: "Score", value: (c) => (c.score === null ? "—" : c.score.toFixed(4)), num: true },
          { title: "Cost USD", value: (c) => (c.cost_nanos === null ? "—" : usd(c.cost_nanos / 1e9)), num: true },
          { title: "Latency ms", value: (c) => ms0(c.latency_ms), num: true },
          { title: "Quality", value: (c) => (c.quality === null ? "—" : c.quality), num: true },
          { title: "Skipped because", value: (c) => c.skipped || "" },
        ], v.candidates, { id: "explain-candidates" }) : null);
    } catch (e) {
      out.replaceChildren(errorBox(e));
    }
  } }, h("div", { class: "inline" }, h("label", {}, "API ", apiSel)), h("label", { class: "block" }, "Request body (JSON)", body),
  h("button", { type: "submit", class: "primary", id: "explain-go" }, "Explain"), out);
  return form;
}

function ms0(v) { return v === null || v === undefined ? "—" : Math.round(v); }

// ---------- access: admin tokens and provider credentials ----------

async function accessPage() {
  const content = [];
  if (state.me.can.admin_tokens) {
    const tokens = await api("GET", "/admin/v1/admin-tokens");
    const name = h("input", { id: "new-token-name", required: true, maxlength: 200 });
    const role = h("select", { id: "new-token-role" }, ["viewer", "billing", "operator", "admin", "owner"].map((r) => h("option", { value: r }, r)));
    const status = h("span", { class: "status", role: "status" });
    content.push(h("h2", {}, "Admin tokens"),
      h("form", { class: "inline", id: "create-token-form", onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          const body = { name: name.value, role: role.value };
          if (state.me.org_id) body.org_id = state.me.org_id;
          const t = await api("POST", "/admin/v1/admin-tokens", body);
          await accessPage();
          showSecret(t.token);
        } catch (e) { status.textContent = e.message; }
      } }, h("label", {}, "Name", name), h("label", {}, "Role", role), h("button", { type: "submit", class: "primary", id: "create-token" }, "Create token"), status),
      h("div", { id: "secret-box" }),
      table([
        { title: "Name", value: (t) => t.name },
        { title: "Role", value: (t) => t.role },
        { title: "Org", value: (t) => t.org_id || "deployment" },
        { title: "Prefix", value: (t) => t.prefix },
        { title: "Status", value: (t) => statusBadge(t.status) },
        { title: "Created", value: (t) => when(t.created_at) },
        { title: "", value: (t) => (t.status === "active" ? confirmButton("Revoke", "Confirm revoke", { class: "revoke-token", "data-token-id": t.id }, async () => {
          await api("DELETE", `/admin/v1/admin-tokens/${encodeURIComponent(t.id)}`);
          await accessPage();
        }) : "") },
      ], tokens.data, { id: "admin-tokens" }));
  }
  if (state.me.can.credentials) {
    const creds = await api("GET", "/admin/v1/credentials").catch((e) => ({ error: e }));
    content.push(h("h2", {}, "Provider credentials"));
    if (creds.error) {
      content.push(errorBox(creds.error));
    } else {
      const provider = h("input", { id: "cred-provider", required: true, maxlength: 100, placeholder: "openai" });
      const key = h("input", { id: "cred-key", type: "password", required: true, autocomplete: "off", maxlength: 4000 });
      const status = h("span", { class: "status", role: "status" });
      content.push(h("form", { class: "inline", id: "cred-form", onsubmit: async (ev) => {
        ev.preventDefault();
        const body = { provider: provider.value, api_key: key.value };
        if (state.me.org_id) body.org_id = state.me.org_id;
        try {
          await api("POST", "/admin/v1/credentials", body);
          key.value = "";
          await accessPage();
        } catch (e) { status.textContent = e.message; }
      } }, h("label", {}, "Provider", provider), h("label", {}, "API key (sealed; never shown again)", key),
      h("button", { type: "submit", class: "primary", id: "set-credential" }, "Set"), status),
      table([
        { title: "Provider", value: (c) => c.provider },
        { title: "Org", value: (c) => c.org_id || "all (global)" },
        { title: "Fingerprint", value: (c) => c.fingerprint },
        { title: "Updated", value: (c) => when(c.updated_at) },
        { title: "", value: (c) => confirmButton("Delete", "Confirm delete", { class: "delete-credential" }, async () => {
          await api("DELETE", `/admin/v1/credentials/${encodeURIComponent(c.id)}`);
          await accessPage();
        }) },
      ], creds.data, { id: "credentials" }));
    }
  }
  setPage("Access", ...content);
}

// ---------- batches ----------

async function batchesPage() {
  const v = await api("GET", "/admin/v1/batches?limit=100");
  const progress = (b) => {
    const c = b.request_counts || { total: 0, completed: 0, failed: 0 };
    const done = c.completed + c.failed;
    return h("span", {}, h("progress", { max: Math.max(1, c.total), value: done, "aria-label": `${done} of ${c.total}` }),
      ` ${c.completed} done, ${c.failed} failed of ${c.total}`);
  };
  setPage("Batches",
    h("p", {}, h("button", { type: "button", id: "refresh-batches", onclick: () => batchesPage() }, "Refresh")),
    table([
      { title: "Batch", value: (b) => b.id },
      { title: "Status", value: (b) => h("span", { class: `badge ${b.status === "completed" ? "good" : ["failed", "expired", "cancelled"].includes(b.status) ? "bad" : ""}` }, b.status) },
      { title: "Endpoint", value: (b) => b.endpoint },
      { title: "Progress", value: progress },
      { title: "Created", value: (b) => when(b.created_at) },
      { title: "Owner", value: (b) => b.owner },
    ], v.data, { id: "batches", rowAttrs: (b) => ({ "data-batch-id": b.id }) }));
}

// ---------- requests ----------

async function requestsPage() {
  const q = state.requestQuery || {};
  const field = (name, label) => h("label", {}, label, h("input", { id: `q-${name}`, name, value: q[name] || "", maxlength: 256 }));
  const results = h("div", { id: "request-results" });
  const form = h("form", { class: "inline", id: "request-search", onsubmit: async (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    state.requestQuery = Object.fromEntries([...data.entries()].filter(([, v]) => v));
    await search();
  } }, field("request_id", "Request id"), field("key_id", "Key id"), field("model", "Model"),
  field("status", "Status"), field("tag", "Tag (key=value)"), h("button", { type: "submit", class: "primary", id: "search" }, "Search"));
  async function search() {
    const params = new URLSearchParams(state.requestQuery || {});
    params.set("limit", "100");
    try {
      const v = await api("GET", `/admin/v1/requests?${params}`);
      results.replaceChildren(requestTable(v.data));
    } catch (e) {
      results.replaceChildren(errorBox(e));
    }
  }
  setPage("Requests", form, results);
  await search();
}

function requestTable(rows) {
  return table([
    { title: "When", value: (r) => when(r.ts) },
    { title: "Request", value: (r) => h("a", { href: `#/requests/${r.request_id}` }, r.request_id) },
    { title: "#", value: (r) => r.attempt, num: true },
    { title: "API", value: (r) => r.api },
    { title: "Model", value: (r) => r.model },
    { title: "Target", value: (r) => `${r.provider}/${r.upstream_model}` },
    { title: "Status", value: (r) => h("span", { class: `badge ${r.status === "ok" ? "good" : "bad"}` }, r.status) },
    { title: "Tokens in/out", value: (r) => `${r.input_tokens}/${r.output_tokens}`, num: true },
    { title: "Latency ms", value: (r) => r.latency_ms, num: true },
    { title: "Billed USD", value: (r) => (r.billed ? usd(r.billed) : "—"), num: true },
    { title: "Key", value: (r) => r.key_id },
  ], rows, { id: "requests", rowAttrs: (r) => ({ "data-request-id": r.request_id }) });
}

// The request's trace: a link to the configured viewer, else its id.
function traceLink(traceId) {
  if (!traceId) return "tracing off";
  const viewer = state.me.trace_viewer;
  if (!viewer) return traceId;
  return h("a", { id: "trace-link", href: viewer.replace("{trace_id}", encodeURIComponent(traceId)), rel: "noopener noreferrer", target: "_blank" }, traceId);
}

async function requestPage(id) {
  const v = await api("GET", `/admin/v1/requests?request_id=${encodeURIComponent(id)}`);
  const attempts = [...v.data].reverse();
  const last = attempts[attempts.length - 1];
  const billed = attempts.reduce((a, r) => a + Number(r.billed || 0), 0);
  const tags = last.tag_keys.map((k, i) => `${k}=${last.tag_values[i]}`).join(", ");
  const facts = [
    ["Outcome", last.status], ["API", last.api], ["Model asked", last.model],
    ["Class", last.class || "—"], ["Route", last.route ? `${last.route} (${last.strategy})` : "fixed order"],
    ["Attempts", attempts.length], ["Billed USD", usd(billed)], ["Key", last.key_id],
    ["Org / project", `${last.org_id || "—"} / ${last.project_id || "—"}`], ["Tags", tags || "—"],
    ["Trace", traceLink(last.trace_id)],
  ];
  setPage(`Request ${id}`,
    h("p", {}, h("a", { href: "#/requests" }, "← Requests")),
    h("dl", { id: "request-facts", class: "facts" }, facts.flatMap(([k, val]) => [h("dt", {}, k), h("dd", {}, val instanceof Node ? val : String(val))])),
    h("h2", {}, "Attempts"),
    table([
      { title: "#", value: (r) => r.attempt, num: true },
      { title: "Target", value: (r) => `${r.provider}/${r.upstream_model}` },
      { title: "Status", value: (r) => r.status },
      { title: "Error", value: (r) => r.error_code },
      { title: "Fallback because", value: (r) => r.fallback_reason },
      { title: "Queue ms", value: (r) => r.queue_wait_ms, num: true },
      { title: "TTFT ms", value: (r) => (r.ttft_ms === null ? "—" : r.ttft_ms), num: true },
      { title: "Latency ms", value: (r) => r.latency_ms, num: true },
      { title: "In/out tokens", value: (r) => `${r.input_tokens}/${r.output_tokens}`, num: true },
      { title: "Cost USD", value: (r) => (r.cost ? usd(r.cost) : "—"), num: true },
      { title: "Billed USD", value: (r) => (r.billed ? usd(r.billed) : "—"), num: true },
    ], attempts, { id: "attempts" }));
}

// ---------- audit ----------

async function auditPage() {
  const q = state.auditQuery || {};
  const field = (name, label) => h("label", {}, label, h("input", { id: `a-${name}`, name, value: q[name] || "", maxlength: 256 }));
  const results = h("div", { id: "audit-results" });
  const form = h("form", { class: "inline", onsubmit: async (ev) => {
    ev.preventDefault();
    state.auditQuery = Object.fromEntries([...new FormData(form).entries()].filter(([, v]) => v));
    await load();
  } }, field("actor", "Actor"), field("action", "Action"), field("target_kind", "Target kind"),
  h("button", { type: "submit", class: "primary" }, "Filter"));
  async function load() {
    const params = new URLSearchParams(state.auditQuery || {});
    params.set("limit", "100");
    try {
      const v = await api("GET", `/admin/v1/audit?${params}`);
      results.replaceChildren(table([
        { title: "When", value: (r) => new Date(r.at_ms).toISOString().replace("T", " ").slice(0, 19) },
        { title: "Actor", value: (r) => `${r.actor} (${r.role})` },
        { title: "Action", value: (r) => r.action },
        { title: "Target", value: (r) => `${r.target_kind} ${r.target_id}` },
        { title: "Request", value: (r) => r.request_id || "" },
      ], v.data, { id: "audit" }));
    } catch (e) {
      results.replaceChildren(errorBox(e));
    }
  }
  setPage("Audit log", form, results);
  await load();
}

// ---------- boot ----------

window.addEventListener("hashchange", route);
document.getElementById("sign-out").addEventListener("click", signOut);
api("GET", "/console/api/session").then((me) => { state.me = me; start(); }, () => showLogin());
