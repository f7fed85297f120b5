// The chat page: streams /v1/chat/completions (SSE over fetch) and shows each reply's latency figures.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "hyperdecode.apiKey";
const FIGURES = [["ttft", "TTFT", "ms"], ["tps", "decode", "tok/s"], ["accepted", "accepted", "tok/step"],
  ["cached", "cached", "prompt tokens"]];

let model = null;       // the /v1/models card of the served model
let history = [];       // the conversation so far, sent with every request
let controller = null;  // aborts the reply being streamed

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function errorMessage(response) {
  try {
    const body = await response.json();  // OpenAI's envelope: {"error": {"message": ...}}
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON */ }
  return `HTTP ${response.status} ${response.statusText}`;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

async function loadModel() {
  const badge = $("badge");
  try {
    const response = await fetch("/v1/models", { headers: authHeaders() });
    if (!response.ok) throw new Error(await errorMessage(response));
    model = (await response.json()).data[0];
    $("max-tokens").max = model.max_model_len;
    const spec = model.speculative ? `speculative ${model.speculative}` : "no speculation";
    const cache = model.prefix_caching ? "prefix cache" : "no prefix cache";
    badge.textContent = [model.id, model.backend, model.device, spec, cache].filter(Boolean).join(" · ");
    Object.assign(badge.dataset, { model: model.id, backend: model.backend, device: model.device,
      speculative: model.speculative || "" });
    badge.classList.remove("bad");
  } catch (e) {
    model = null;
    badge.textContent = `no model: ${e.message}`;
    badge.classList.add("bad");
  }
}

function addMessage(role, text) {
  const msg = document.createElement("div");
  msg.className = `msg ${role}`;
  msg.setAttribute("data-testid", `msg-${role}`);
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  msg.append(body);
  if (role === "assistant") {
    const stats = document.createElement("div");
    stats.className = "stats";
    for (const [name, before, after] of FIGURES) {
      const item = document.createElement("span");
      item.className = `stat stat-${name}`;
      item.hidden = name === "accepted" || name === "cached";  // shown once the usage chunk brings them
      const value = document.createElement("b");
      value.className = name;
      value.setAttribute("data-testid", name);
      value.textContent = "–";
      item.append(before ? `${before} ` : "", value, ` ${after}`);
      stats.append(item);
    }
    msg.append(stats);
  }
  $("messages").append(msg);
  msg.scrollIntoView({ block: "end" });
  return msg;
}

function setFigure(msg, name, value) {
  msg.querySelector(`.${name}`).textContent = value;
  msg.querySelector(`.stat-${name}`).hidden = false;
}

// The payloads of an SSE stream's `data:` lines, up to `[DONE]`.
async function* sseData(stream) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      const lines = (buffer + value).split(/\r?\n/);
      buffer = lines.pop();  // a line cut between two reads
      for (const line of lines) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

async function send(text) {
  showError("");
  if (!model) await loadModel();
  if (!model) return showError("no model to talk to: see the badge above");
  const user = { role: "user", content: text };
  addMessage("user", text);
  const reply = addMessage("assistant", "");
  const replyText = reply.querySelector(".text");
  const sent = performance.now();
  let content = "", first = null, last = null, tokens = 0, atFirst = 0, usage = null;
  // decode speed: the tokens after the first chunk's over the time since it
  const speed = () => (last > first && tokens > atFirst
    ? ((tokens - atFirst) * 1000 / (last - first)).toFixed(1) : "–");
  controller = new AbortController();
  setBusy(true);
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", signal: controller.signal,
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify({
        model: model.id, messages: [...history, user], stream: true,
        stream_options: { include_usage: true, continuous_usage_stats: true },
        temperature: Number($("temperature").value), max_tokens: Number($("max-tokens").value),
        ...($("ignore-eos").checked ? { ignore_eos: true } : {}),
      }),
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    for await (const data of sseData(response.body)) {
      if (data.error) throw new Error(data.error.message);
      const choice = (data.choices || [])[0];
      const delta = (choice && choice.delta) || {};
      if (data.usage) usage = data.usage;
      if (delta.content) {
        last = performance.now();
        content += delta.content;
        replyText.textContent = content;
        tokens = usage ? usage.completion_tokens : tokens + 1;  // continuous usage: exact; else a token a chunk
        if (first === null) {
          first = last;
          atFirst = tokens;
          setFigure(reply, "ttft", (first - sent).toFixed(0));
        }
      } else if (choice && choice.finish_reason) {
        last = performance.now();  // the last token may bring no text (end of sequence)
      } else if (!choice && usage) {  // the final usage chunk
        tokens = usage.completion_tokens;
        const spec = usage.spec_decode;
        if (spec && spec.mean_accepted_length != null) {
          setFigure(reply, "accepted", spec.mean_accepted_length.toFixed(2));
        }
        const details = usage.prompt_tokens_details;
        if (details) setFigure(reply, "cached", `${details.cached_tokens} of ${usage.prompt_tokens}`);
      }
      if (first !== null) setFigure(reply, "tps", speed());
    }
    history.push(user, { role: "assistant", content });
  } catch (e) {
    if (e.name === "AbortError") {
      reply.classList.add("stopped");
      history.push(user, { role: "assistant", content });  // keep what came before the stop
    } else {
      reply.classList.add("failed");
      showError(e.message);
    }
  } finally {
    controller = null;
    setBusy(false);
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

function init() {
  $("api-key").value = localStorage.getItem(KEY_STORE) || "";
  $("api-key").addEventListener("change", () => {
    const key = $("api-key").value.trim();
    key ? localStorage.setItem(KEY_STORE, key) : localStorage.removeItem(KEY_STORE);
    loadModel();
  });
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("prompt").value.trim();
    if (!text || controller) return;
    $("prompt").value = "";
    send(text);
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("clear").addEventListener("click", () => {
    if (controller) controller.abort();
    history = [];
    $("messages").replaceChildren();
    showError("");
  });
  loadModel();
}

init();
