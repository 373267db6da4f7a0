// The playground: one conversation with a chat model, streamed. The thought of a reasoning
// model goes to its own collapsible pane beside the answer; each answer ends with its token
// usage and speed. Stop aborts the fetch, which closes the connection: the server then
// cancels the generation and bills what was generated.

import { ApiError, call, el, events, json, status } from "./api.js";

const $ = (id) => document.getElementById(id);

let models = [];
// The conversation as the API gets it: earlier answers without their thoughts, as the
// contract asks clients to send them back.
let history = [];
let running = null;

export async function loadModels() {
  const select = $("model");
  const kept = select.value;
  try {
    models = (await json("/v1/models?type=chat")).data;
  } catch (e) {
    models = [];
    select.replaceChildren();
    showReasoning();
    status("models-status", e.status === 401 ? `${e.message}: type an API key above` : e.message, true);
    return;
  }
  select.replaceChildren(
    ...models.map((m) => el("option", { value: m.id }, m.reasoning ? `${m.id} (reasoning)` : m.id)),
  );
  if (models.some((m) => m.id === kept)) select.value = kept;
  showReasoning();
  status("models-status", models.length ? "" : "this server serves no chat model", !models.length);
}

function model() {
  return models.find((m) => m.id === $("model").value);
}

// The thinking fields a model honours, and only those: `enable_thinking: false` on a model
// that always thinks would be refused.
function showReasoning() {
  const r = model()?.reasoning;
  $("reasoning").hidden = !r;
  $("enable-thinking-row").hidden = !r?.switchable;
  $("thinking-budget").placeholder = r ? `default ${r.thinking_budget}` : "";
}

function request() {
  const m = model();
  const body = {
    model: m.id,
    stream: true,
    stream_options: { include_usage: true },
    messages: [],
  };
  const system = $("system").value.trim();
  if (system) body.messages.push({ role: "system", content: system });
  body.messages.push(...history);
  const fields = [
    ["temperature", "temperature", Number.parseFloat],
    ["top_p", "top-p", Number.parseFloat],
    ["max_tokens", "max-tokens", Number.parseInt],
    ["seed", "seed", Number.parseInt],
  ];
  if (m.reasoning) {
    fields.push(["thinking_budget", "thinking-budget", Number.parseInt]);
    if (m.reasoning.switchable) body.enable_thinking = $("enable-thinking").checked;
  }
  // An empty field leaves the server's default.
  for (const [field, id, parse] of fields) {
    const text = $(id).value.trim();
    if (text !== "" && !Number.isNaN(parse(text))) body[field] = parse(text);
  }
  return body;
}

// One exchange in the transcript: the user's message and the answer as it streams.
function turn(text, modelId) {
  const transcript = $("transcript");
  transcript.querySelector(".hint")?.remove();
  const thoughtText = el("div", { class: "thought-text" });
  const summary = el("summary", {}, "Thinking…");
  const thought = el("details", { class: "thought", open: true, hidden: true }, summary, thoughtText);
  const answer = el("div", { class: "answer" });
  const stats = el("div", { class: "stats" }, `${modelId} · waiting…`);
  const node = el(
    "div",
    { class: "turn assistant streaming" },
    el("div", { class: "reply" }, thought, answer),
    stats,
  );
  transcript.append(el("div", { class: "turn user" }, el("div", { class: "bubble" }, text)), node);
  const follow = () => transcript.scrollTo({ top: transcript.scrollHeight });
  follow();
  let content = "";
  return {
    think(t) {
      thought.hidden = false;
      thoughtText.append(t);
      follow();
    },
    say(t) {
      content += t;
      answer.append(t);
      follow();
    },
    content: () => content,
    end(outcome, line) {
      node.classList.remove("streaming");
      node.classList.add(outcome);
      if (!thought.hidden) summary.textContent = "Thought";
      stats.textContent = line;
    },
  };
}

function usageLine(modelId, usage, finish, times) {
  const parts = [modelId];
  if (usage) {
    const reasoning = usage.completion_tokens_details?.reasoning_tokens;
    parts.push(
      `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens` +
        (reasoning ? ` (${reasoning} reasoning)` : ""),
    );
    const seconds = (times.end - times.first) / 1000;
    if (times.first && seconds > 0 && usage.completion_tokens > 1) {
      // The first token's time is the wait for the prompt; speed counts the ones after it.
      parts.push(`${((usage.completion_tokens - 1) / seconds).toFixed(1)} tokens/s`);
    }
  }
  if (times.first) parts.push(`first token ${Math.round(times.first - times.start)} ms`);
  if (finish) parts.push(`finish: ${finish}`);
  return parts.join(" · ");
}

async function send(event) {
  event.preventDefault();
  const text = $("prompt").value.trim();
  const m = model();
  if (!text || !m || running) return;
  history.push({ role: "user", content: text });
  const body = request();
  $("prompt").value = "";
  const t = turn(text, m.id);
  running = new AbortController();
  busy(true);
  const times = { start: performance.now(), first: 0, end: 0 };
  let usage = null;
  let finish = null;
  try {
    const res = await call("/v1/chat/completions", { method: "POST", body, signal: running.signal });
    for await (const data of events(res)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(500, chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        const delta = choice.delta || {};
        if (delta.reasoning_content || delta.content) times.first ||= performance.now();
        if (delta.reasoning_content) t.think(delta.reasoning_content);
        if (delta.content) t.say(delta.content);
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
    times.end = performance.now();
    history.push({ role: "assistant", content: t.content() });
    t.end("done", usageLine(m.id, usage, finish, times));
  } catch (e) {
    if (e.name === "AbortError") {
      history.push({ role: "assistant", content: t.content() });
      t.end("stopped", `${m.id} · stopped: the server cancelled the generation and bills what it generated`);
    } else {
      // The message was not answered: it leaves the conversation, so a retry sends it once.
      history.pop();
      t.end("failed", `${m.id} · ${e.message}`);
    }
  } finally {
    running = null;
    busy(false);
  }
}

function busy(on) {
  $("send").disabled = on;
  $("stop").disabled = !on;
  $("page-playground").classList.toggle("busy", on);
}

export function setupPlayground() {
  $("model").addEventListener("change", showReasoning);
  $("composer").addEventListener("submit", send);
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) send(e);
  });
  $("stop").addEventListener("click", () => running?.abort());
  $("clear").addEventListener("click", () => {
    running?.abort();
    history = [];
    $("transcript").replaceChildren();
  });
  $("settings").addEventListener("submit", (e) => e.preventDefault());
}
