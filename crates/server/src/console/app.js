// The console's shell: three pages as tabs of one document, chosen by the URL's hash
// (#playground, #account, #admin), and the API key field the pages share.

import { keys } from "./api.js";
import { loadAccount, setupAccount } from "./account.js";
import { loadAdmin, setupAdmin } from "./admin.js";
import { loadModels, setupPlayground } from "./playground.js";

const PAGES = { playground: loadModels, account: loadAccount, admin: loadAdmin };

function page() {
  const name = location.hash.slice(1);
  return name in PAGES ? name : "playground";
}

// Shows the page the hash names and loads its data afresh.
function show() {
  const current = page();
  for (const name of Object.keys(PAGES)) {
    document.getElementById(`page-${name}`).hidden = name !== current;
  }
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.page === current);
  }
  PAGES[current]();
}

function useKey(key) {
  const input = document.getElementById("api-key");
  input.value = key;
  keys.set("api", key);
  show();
}

const apiKey = document.getElementById("api-key");
apiKey.value = keys.get("api");
apiKey.addEventListener("change", () => useKey(apiKey.value.trim()));
setupPlayground();
setupAccount();
setupAdmin(useKey);
window.addEventListener("hashchange", show);
show();
