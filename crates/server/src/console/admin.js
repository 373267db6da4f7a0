// The operator's pages, over `/admin/…` with the admin key: accounts and credits, keys
// (a new key's secret is shown once, as the server returns it once), the prices and
// limits in force, and the models with their backends' health.

import { el, fmt, json, keys, status } from "./api.js";

const $ = (id) => document.getElementById(id);

const admin = (path, method, body) => json(path, { method, body, admin: true });

function rows(table, list, row, empty) {
  const body = $(table).tBodies[0];
  body.replaceChildren(...list.map(row));
  if (!list.length) body.append(el("tr", {}, el("td", { colspan: 9, class: "hint" }, empty)));
}

function drawAccounts(accounts) {
  rows("accounts", accounts, (a) =>
    el(
      "tr",
      { "data-account": a.name },
      el("td", {}, a.name),
      el("td", {}, a.tier),
      el("td", { class: "num" }, a.balance),
      el("td", { class: "num" }, a.reserved),
      el("td", { class: "num" }, a.available),
      el("td", {}, fmt.when(a.created_at)),
    ), "No accounts yet");
  for (const select of document.querySelectorAll(".account-choice")) {
    const kept = select.value;
    select.replaceChildren(...accounts.map((a) => el("option", { value: a.name }, a.name)));
    if (accounts.some((a) => a.name === kept)) select.value = kept;
  }
}

// Revoking takes two clicks, the second within a few seconds: no modal dialog, no slip.
function revokeButton(k) {
  let armed = null;
  const button = el("button", { type: "button", class: "danger" }, "Revoke");
  button.addEventListener("click", async () => {
    if (!armed) {
      button.textContent = "Really revoke?";
      armed = setTimeout(() => {
        armed = null;
        button.textContent = "Revoke";
      }, 4000);
      return;
    }
    clearTimeout(armed);
    await act(() => admin(`/admin/keys/${k.id}`, "DELETE"), `key ${k.prefix}… revoked`);
  });
  return button;
}

function drawKeys(list) {
  rows("keys", list, (k) =>
    el(
      "tr",
      { "data-key": k.id, class: k.revoked ? "revoked" : "" },
      el("td", {}, String(k.id)),
      el("td", {}, k.account),
      el("td", { class: "mono" }, `${k.prefix}…`),
      el("td", {}, fmt.when(k.created_at)),
      el("td", {}, fmt.when(k.last_used_at)),
      el("td", {}, el("span", { class: `badge ${k.revoked ? "error" : "done"}` }, k.revoked ? "revoked" : "active")),
      el("td", {}, k.revoked ? "" : revokeButton(k)),
    ), "No keys: the API is open to anyone who reaches it");
}

function limit(r) {
  const part = (v, unit) => (v === null || v === undefined ? null : `${fmt.short(v)} ${unit}`);
  const all = [part(r.rpm, "RPM"), part(r.tpm, "TPM"), part(r.rpd, "RPD"), part(r.tpd, "TPD")].filter(Boolean);
  return all.length ? all.join(", ") : "unlimited";
}

function drawTerms(terms) {
  const tiers = Object.keys(terms.tiers).sort();
  $("terms").tHead.replaceChildren(
    el("tr", {}, el("th", {}, "Model"), el("th", { class: "num" }, "Input"), el("th", { class: "num" }, "Cached input"), el("th", { class: "num" }, "Output"), ...tiers.map((t) => el("th", {}, `Limits: ${t}`))),
  );
  rows("terms", terms.models, (m) =>
    el(
      "tr",
      { "data-model": m.id },
      el("td", {}, m.id),
      el("td", { class: "num" }, m.free ? "free" : m.input_per_million),
      el("td", { class: "num" }, m.free ? "" : m.cached_input_per_million ?? m.input_per_million),
      el("td", { class: "num" }, m.free ? "" : m.output_per_million),
      ...tiers.map((t) => el("td", {}, limit(m.limits[t]))),
    ), "No models");
}

function health(m) {
  if (m.serve === "upstream") {
    const list = el("ul", { class: "backends" }, ...m.pool.map((b) =>
      el("li", {}, el("span", { class: `badge ${b.up ? "done" : "error"}` }, b.up ? "up" : "down"), ` ${b.url} (${b.model}, weight ${b.weight}, ${b.outstanding} in flight${b.failures ? `, ${b.failures} failures` : ""})`),
    ));
    return el("div", {}, `${m.backends_up} of ${m.backends} backends up`, list);
  }
  if (m.serve === "local") return `${m.running} running`;
  return "ready";
}

function drawModels(list) {
  rows("models", list, (m) =>
    el(
      "tr",
      { "data-model": m.id },
      el("td", {}, m.id),
      el("td", {}, m.sub_type && m.sub_type !== m.type ? `${m.type} / ${m.sub_type}` : m.type),
      el("td", {}, m.serve),
      el("td", { class: "num" }, m.context_length ? fmt.int(m.context_length) : "—"),
      el("td", {}, m.reasoning ? `yes (budget ${m.reasoning.thinking_budget}${m.reasoning.switchable ? ", switchable" : ""})` : "no"),
      el("td", {}, health(m)),
    ), "No models");
}

export async function loadAdmin() {
  const body = $("admin-body");
  if (!keys.get("admin")) {
    body.hidden = true;
    status("admin-status", "Type the admin key the server was started with (--admin-key).");
    return;
  }
  try {
    const [accounts, keyList, terms, models] = await Promise.all([
      admin("/admin/accounts"),
      admin("/admin/keys"),
      admin("/admin/terms"),
      admin("/admin/models"),
    ]);
    drawAccounts(accounts.data);
    drawKeys(keyList.data);
    drawTerms(terms);
    drawModels(models.data);
    body.hidden = false;
    status("admin-status", "");
  } catch (e) {
    body.hidden = true;
    const why = e.status === 404 ? "this server has no admin API: start it with --admin-key" : e.message;
    status("admin-status", why, true);
  }
}

// Runs a change, then shows its outcome and the tables as they are now.
async function act(change, done) {
  try {
    await change();
    await loadAdmin();
    status("admin-status", done);
  } catch (e) {
    status("admin-status", e.message, true);
  }
}

function form(id, handler) {
  $(id).addEventListener("submit", (e) => {
    e.preventDefault();
    handler(Object.fromEntries(new FormData(e.target)), e.target);
  });
}

export function setupAdmin(useKey) {
  $("admin-key").value = keys.get("admin");
  form("admin-login", () => {
    keys.set("admin", $("admin-key").value.trim());
    loadAdmin();
  });
  $("admin-logout").addEventListener("click", () => {
    keys.set("admin", "");
    $("admin-key").value = "";
    loadAdmin();
  });
  form("new-account", (f, node) =>
    act(async () => {
      await admin("/admin/accounts", "POST", { name: f.name.trim(), tier: f.tier.trim() || undefined });
      node.reset();
    }, `account ${f.name.trim()} created`));
  form("credit", (f, node) =>
    act(async () => {
      await admin(`/admin/accounts/${encodeURIComponent(f.account)}/credit`, "POST", { amount: f.amount.trim(), note: f.note.trim() || undefined });
      node.reset();
    }, `${f.amount.trim()} credited to ${f.account}`));
  form("new-key", (f) =>
    act(async () => {
      const k = await admin("/admin/keys", "POST", { account: f.account });
      $("new-secret-value").textContent = k.key;
      $("new-secret").hidden = false;
    }, `key created for ${f.account}`));
  $("use-secret").addEventListener("click", () => useKey($("new-secret-value").textContent));
}
