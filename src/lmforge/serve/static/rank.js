// The ranking page of `lmforge align collect`: fetch the next item, let a person rank its replies
// (drag, ▲/▼ or numbers; optional criteria scores and a note), POST the ranking, repeat.
// Every submission is stored by the server before it answers, so closing the page loses nothing.
// When the server requires an access key, the link carries it as ?key=...; it is kept in this tab's
// sessionStorage (and dropped from the address bar), sent as "Authorization: Bearer KEY" on every
// call, and asked for in the header after a 401.
"use strict";

const CRITERIA = ["accuracy", "relevance", "coherence"];
const KEY_STORE = "lmforge.rank.key";
const $ = (id) => document.getElementById(id);
let current = null;
const skipped = [];

function keyFromLink() { // ?key=... → sessionStorage, and out of the address bar and history
  const params = new URLSearchParams(location.search);
  if (!params.has("key")) return;
  sessionStorage.setItem(KEY_STORE, params.get("key"));
  params.delete("key");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
}

function askForKey() {
  $("keybox").hidden = false;
  setMessage("This page needs its access key: open the link you were given, or enter its key here.", "error");
  $("key").focus();
}

async function api(path, options) { // fetch with the key; a 401 shows the key box
  const opts = Object.assign({}, options);
  opts.headers = Object.assign({}, opts.headers);
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) opts.headers.Authorization = "Bearer " + key;
  const r = await fetch(path, opts);
  const data = await r.json();
  if (r.status === 401) askForKey();
  return { r, data };
}

function setMessage(text, kind) {
  const m = $("message");
  m.textContent = text;
  m.className = kind || "";
}

function shuffle(list) {
  for (let i = list.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [list[i], list[j]] = [list[j], list[i]];
  }
  return list;
}

function cards() {
  return Array.from($("responses").querySelectorAll(".card"));
}

function renumber() { // ranks follow the cards' order after a drag or a move
  cards().forEach((c, i) => { c.querySelector(".rank").value = String(i + 1); });
}

function move(card, delta) {
  const list = cards();
  const i = list.indexOf(card) + delta;
  if (i < 0 || i >= list.length) return;
  if (delta < 0) list[i].before(card); else list[i].after(card);
  renumber();
}

function card(resp, k) {
  const li = document.createElement("li");
  li.className = "card";
  li.draggable = true;
  li.dataset.id = resp.id;
  const handle = document.createElement("span");
  handle.className = "handle";
  handle.textContent = "☰";
  handle.title = "drag to reorder";
  const controls = document.createElement("div");
  const rank = document.createElement("input");
  rank.type = "number";
  rank.min = "1";
  rank.max = String(k);
  rank.className = "rank";
  rank.setAttribute("aria-label", "rank of reply " + resp.id);
  const moves = document.createElement("div");
  moves.className = "moves";
  for (const [label, d] of [["▲", -1], ["▼", 1]]) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.className = d < 0 ? "up" : "down";
    b.addEventListener("click", () => move(li, d));
    moves.append(b);
  }
  controls.append(rank, moves);
  const text = document.createElement("pre");
  text.className = "text";
  text.textContent = resp.text || "(empty reply)";
  const crit = document.createElement("div");
  crit.className = "criteria";
  for (const name of CRITERIA) {
    const label = document.createElement("label");
    const sel = document.createElement("select");
    sel.name = name;
    sel.className = "criterion";
    for (const v of ["", "1", "2", "3", "4", "5"]) {
      const o = document.createElement("option");
      o.value = v;
      o.textContent = v || "–";
      sel.append(o);
    }
    label.append(name + " ", sel);
    crit.append(label);
  }
  li.append(handle, controls, text, crit);
  li.addEventListener("dragstart", (e) => {
    li.classList.add("dragging");
    e.dataTransfer.effectAllowed = "move";
    e.dataTransfer.setData("text/plain", resp.id);
  });
  li.addEventListener("dragend", () => { li.classList.remove("dragging"); renumber(); });
  li.addEventListener("dragover", (e) => { e.preventDefault(); li.classList.add("over"); });
  li.addEventListener("dragleave", () => li.classList.remove("over"));
  li.addEventListener("drop", (e) => {
    e.preventDefault();
    li.classList.remove("over");
    const from = $("responses").querySelector(`.card[data-id="${e.dataTransfer.getData("text/plain")}"]`);
    if (!from || from === li) return;
    const list = cards();
    if (list.indexOf(from) < list.indexOf(li)) li.after(from); else li.before(from);
    renumber();
  });
  return li;
}

function show(item, count, total) {
  current = item;
  $("progress").textContent = total === null ? "" : `${count} ranking(s) stored · ${total} item(s)`;
  const prompt = $("prompt");
  const list = $("responses");
  prompt.replaceChildren();
  list.replaceChildren();
  $("note").value = "";
  $("submit").disabled = !item;
  $("skip").disabled = !item;
  if (!item) {
    prompt.textContent = total === null ? "" : "Nothing left to rank for this annotator id. Thank you!";
    return;
  }
  prompt.dataset.item = item.id;
  for (const m of item.prompt) {
    const p = document.createElement("p");
    const role = document.createElement("span");
    role.className = "role";
    role.textContent = m.role + ": ";
    p.append(role, document.createTextNode(m.content));
    prompt.append(p);
  }
  const replies = shuffle(item.responses.slice()); // hide the sampling order
  for (const r of replies) list.append(card(r, replies.length));
}

async function next() {
  const who = $("annotator").value.trim();
  const q = new URLSearchParams({ annotator: who, skip: skipped.join(",") });
  const { r, data } = await api("/api/next?" + q);
  if (!r.ok) {
    if (r.status !== 401) setMessage((data.error && data.error.message) || `error ${r.status}`, "error");
    show(null, 0, null); // nothing to show until the call succeeds
    return;
  }
  if (data.title) { document.title = data.title; $("title").textContent = data.title; }
  show(data.item, data.count, data.total);
}

function collect() {
  const ranks = {};
  const criteria = {};
  for (const c of cards()) {
    const v = c.querySelector(".rank").value.trim();
    if (v !== "") ranks[c.dataset.id] = Number(v);
    const scores = {};
    for (const s of c.querySelectorAll(".criterion")) if (s.value) scores[s.name] = Number(s.value);
    if (Object.keys(scores).length) criteria[c.dataset.id] = scores;
  }
  return {
    item: current.id,
    annotator: $("annotator").value.trim(),
    ranks,
    criteria,
    note: $("note").value,
  };
}

async function submit() {
  if (!current) return;
  const body = collect();
  if (!body.annotator) { setMessage("Enter an annotator id first.", "error"); $("annotator").focus(); return; }
  $("submit").disabled = true;
  try {
    const { r, data } = await api("/api/rankings", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (r.status === 401) return;
    if (!r.ok) { setMessage((data.error && data.error.message) || `error ${r.status}`, "error"); return; }
    setMessage(`Saved: ranking ${data.count} stored.` + (data.done ? " Collection finished." : ""), "ok");
    if (!data.done) await next(); else show(null, data.count, 0);
  } catch (e) {
    setMessage("Could not reach the server: " + e, "error");
  } finally {
    $("submit").disabled = !current;
  }
}

$("annotator").value = localStorage.getItem("lmforge.annotator") || "";
$("annotator").addEventListener("change", () => {
  localStorage.setItem("lmforge.annotator", $("annotator").value.trim());
  next();
});
$("key").addEventListener("change", () => {
  sessionStorage.setItem(KEY_STORE, $("key").value.trim());
  $("keybox").hidden = true;
  if (current) setMessage("Key saved: submit again.", "ok"); // keep the ranking on screen
  else { setMessage("", ""); next(); }
});
$("submit").addEventListener("click", submit);
$("skip").addEventListener("click", () => { if (current) skipped.push(current.id); next(); });
keyFromLink();
next();
