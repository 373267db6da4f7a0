// The console's only way to the server: the keys the user typed (kept for this browser
// tab only), JSON calls whose errors arrive as the API's own messages, and the reading of
// a server-sent event stream.

const KEYS = { api: "tokenfab.apiKey", admin: "tokenfab.adminKey" };

export const keys = {
  get(which) {
    return sessionStorage.getItem(KEYS[which]) || "";
  },
  set(which, value) {
    if (value) sessionStorage.setItem(KEYS[which], value);
    else sessionStorage.removeItem(KEYS[which]);
  },
};

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Every error the server sends is OpenAI-shaped; anything else (a proxy's page) is shown
// by its status.
async function failure(res) {
  let message = `${res.status} ${res.statusText}`;
  try {
    const body = await res.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch {
    // Not JSON: the status says it.
  }
  return new ApiError(res.status, message);
}

// A request with the API key (or, `admin: true`, the admin key); rejects on any status
// but 2xx.
export async function call(path, { method = "GET", body, admin = false, signal } = {}) {
  const headers = {};
  const key = keys.get(admin ? "admin" : "api");
  if (key) headers.authorization = `Bearer ${key}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  if (!res.ok) throw await failure(res);
  return res;
}

export async function json(path, options) {
  return (await call(path, options)).json();
}

// The `data:` payloads of a server-sent event stream, as they arrive.
export async function* events(res) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data) yield data;
    }
  }
}

// A DOM element: `el("td", { class: "num" }, "12")`. Text is always text, never markup.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  node.append(...children.flat().filter((c) => c !== undefined && c !== null));
  return node;
}

export const fmt = {
  int: (n) => Number(n).toLocaleString("en-US"),
  when: (unix) => (unix ? new Date(unix * 1000).toLocaleString() : "—"),
  // Large counts as 1.2k, 3.4M: axis labels and legends stay short.
  short(n) {
    const abs = Math.abs(n);
    if (abs >= 1e6) return `${+(n / 1e6).toFixed(1)}M`;
    if (abs >= 1e3) return `${+(n / 1e3).toFixed(1)}k`;
    return `${+n.toFixed(2)}`;
  },
};

// Shows a message in a status line; `error` marks it as a failure.
export function status(id, message, error = false) {
  const node = document.getElementById(id);
  node.textContent = message || "";
  node.classList.toggle("error", error);
}
