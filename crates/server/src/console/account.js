// The key holder's page: balance, usage per day and model as a chart, and the latest
// requests as the ledger settled them. Everything comes from `/v1/user/…` with the API
// key, so it shows that key's account and nothing else.

import { el, fmt, json, status } from "./api.js";
import { color, stackedBars } from "./chart.js";

const $ = (id) => document.getElementById(id);
const DAY_MS = 86_400_000;

// What the chart shows of a (day, model) total.
const METRICS = {
  tokens: { of: (u) => u.prompt_tokens + u.completion_tokens, label: fmt.short },
  requests: { of: (u) => u.requests, label: fmt.short },
  cost: { of: (u) => Number(u.cost), label: (v) => `${+v.toFixed(6)}` },
};

let usage = { from: "", to: "", data: [] };

function utcDay(ms) {
  return new Date(ms).toISOString().slice(0, 10);
}

function card(title, value, note) {
  return el("div", { class: "card" }, el("div", { class: "card-title" }, title), el("div", { class: "card-value" }, value), note ? el("div", { class: "card-note" }, note) : null);
}

function drawUsage() {
  const metric = METRICS[$("metric").value];
  const days = [];
  for (let t = Date.parse(usage.from); t <= Date.parse(usage.to); t += DAY_MS) days.push(utcDay(t));
  const byModel = new Map();
  for (const u of usage.data) {
    if (!byModel.has(u.model)) byModel.set(u.model, { requests: 0, tokens: 0, reasoning: 0, cost: 0, days: new Map() });
    const m = byModel.get(u.model);
    m.requests += u.requests;
    m.tokens += u.prompt_tokens + u.completion_tokens;
    m.reasoning += u.reasoning_tokens;
    m.cost += Number(u.cost);
    m.days.set(u.day, u);
  }
  // The biggest consumer at the bottom of every bar, and first in the legend.
  const models = [...byModel.keys()].sort((a, b) => byModel.get(b).tokens - byModel.get(a).tokens);
  stackedBars($("usage-chart"), {
    days,
    models,
    value: (day, m) => {
      const u = byModel.get(m).days.get(day);
      return u ? metric.of(u) : 0;
    },
    label: metric.label,
  });
  $("usage-legend").replaceChildren(
    ...models.map((m, i) => {
      const t = byModel.get(m);
      const requests = `${fmt.int(t.requests)} request${t.requests === 1 ? "" : "s"}`;
      const reasoning = t.reasoning ? ` (${fmt.int(t.reasoning)} reasoning)` : "";
      const swatch = el("span", { class: "swatch" });
      // Through the CSSOM: the console's content security policy forbids style attributes.
      swatch.style.background = color(i);
      return el(
        "li",
        { "data-model": m },
        swatch,
        el("strong", {}, m),
        ` ${requests} · ${fmt.int(t.tokens)} tokens${reasoning} · cost ${+t.cost.toFixed(6)}`,
      );
    }),
  );
}

function drawRecent(rows) {
  $("recent").tBodies[0].replaceChildren(
    ...rows.map((r) =>
      el(
        "tr",
        { "data-status": r.status },
        el("td", {}, fmt.when(r.created)),
        el("td", {}, r.model),
        el("td", { class: "mono" }, r.key || "—"),
        el("td", { class: "num" }, fmt.int(r.prompt_tokens)),
        el("td", { class: "num" }, fmt.int(r.completion_tokens)),
        el("td", { class: "num" }, fmt.int(r.reasoning_tokens)),
        el("td", { class: "num" }, r.cost),
        el("td", {}, el("span", { class: `badge ${r.status}` }, r.status.replace("_", " "))),
      ),
    ),
  );
  if (!rows.length) $("recent").tBodies[0].append(el("tr", {}, el("td", { colspan: 8, class: "hint" }, "No requests yet")));
}

export async function loadAccount() {
  const days = Number($("period").value);
  const to = utcDay(Date.now());
  const from = utcDay(Date.now() - (days - 1) * DAY_MS);
  status("account-status", "Loading…");
  try {
    const [info, period, recent] = await Promise.all([
      json("/v1/user/info"),
      json(`/v1/user/usage?from=${from}&to=${to}`),
      json("/v1/user/requests?limit=20"),
    ]);
    const a = info.data;
    $("balance").replaceChildren(
      card("Account", a.name, `tier ${a.role}`),
      card("Balance", a.totalBalance),
      card("Held by running requests", a.reservedBalance),
      card("Available", a.availableBalance),
    );
    usage = period;
    drawUsage();
    drawRecent(recent.data);
    status("account-status", "");
  } catch (e) {
    status("account-status", e.status === 401 ? `${e.message}: type an API key above` : e.message, true);
  }
}

export function setupAccount() {
  $("period").addEventListener("change", loadAccount);
  $("metric").addEventListener("change", drawUsage);
  $("account-refresh").addEventListener("click", loadAccount);
}
