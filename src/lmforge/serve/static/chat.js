// lmforge chat page: keeps the conversation in the browser and streams each reply from
// POST /v1/chat/completions (server-sent events). No build step, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const turns = [];  // {role, content} of the user and assistant turns
let modelId = null;
let controller = null;

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function showError(text) { $("error").textContent = text || ""; }

async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
    modelId = body.data[0].id;
    $("model").textContent = "model: " + modelId;
    showError("");
    // a reply may use at most half the context by default, so the conversation still fits
    const h = await fetch("/health");
    if (h.ok) {
      const ctx = (await h.json()).context_length;
      const box = $("max-tokens");
      if (ctx && parseInt(box.value, 10) > ctx / 2) box.value = Math.max(1, Math.floor(ctx / 2));
      $("model").textContent += " (context " + ctx + " tokens)";
    }
  } catch (e) {
    $("model").textContent = "model: unknown";
    showError("cannot list models: " + e.message);
  }
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("messages").appendChild(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

function busy(on) {
  $("send").disabled = on;
  $("stop").disabled = !on;
}

async function send() {
  const text = $("message").value.trim();
  if (!text || controller) return;
  if (!modelId) await loadModel();
  if (!modelId) return;
  showError("");
  $("message").value = "";
  turns.push({ role: "user", content: text });
  bubble("user", text);
  const out = bubble("assistant", "");
  out.classList.add("streaming");
  const system = $("system").value.trim();
  const messages = (system ? [{ role: "system", content: system }] : []).concat(turns);
  const body = {
    model: modelId,
    messages,
    stream: true,
    temperature: parseFloat($("temperature").value),
    top_p: parseFloat($("top-p").value),
    max_tokens: parseInt($("max-tokens").value, 10) || 128,
  };
  controller = new AbortController();
  busy(true);
  let reply = "", finish = null;
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!r.ok) {
      const err = await r.json().catch(() => ({}));
      throw new Error(err.error ? err.error.message : r.status + " " + r.statusText);
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          for (const choice of chunk.choices || []) {
            if (choice.delta && choice.delta.content) {
              reply += choice.delta.content;
              out.textContent = reply;
              $("messages").scrollTop = $("messages").scrollHeight;
            }
            if (choice.finish_reason) finish = choice.finish_reason;
          }
        }
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") showError(e.message);
    finish = finish || (e.name === "AbortError" ? "stopped" : "error");
  } finally {
    out.classList.remove("streaming");
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = finish === "length" ? "(cut at max tokens)" : finish === "stopped" ? "(stopped)" : "";
    out.appendChild(meta);
    turns.push({ role: "assistant", content: reply });
    controller = null;
    busy(false);
  }
}

$("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
$("message").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); }
});
$("stop").addEventListener("click", () => { if (controller) controller.abort(); });
$("reset").addEventListener("click", () => {
  if (controller) controller.abort();
  turns.length = 0;
  $("messages").textContent = "";
  showError("");
});
$("api-key").addEventListener("change", loadModel);
for (const [id, outId] of [["temperature", "temperature-value"], ["top-p", "top-p-value"]]) {
  $(id).addEventListener("input", () => { $(outId).textContent = $(id).value; });
}
loadModel();
