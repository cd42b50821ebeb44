// Live chat: a chat panel that talks to the server's /api/live WebSocket (see llmri/viewer/live.py for the
// protocol). Each answer is recorded as a session; its frames arrive with their tokens in one binary message
// (the replay encoding), go straight into the frame cache and are drawn before the token's text is shown.
import { LRU, decodeArray, getJSON, sessionUrl } from "./api.js";
import { openSession, refreshSessions, setBadge } from "./session.js";
import { S, chat as C, grow, newId, ready } from "./state.js";
import { appendTokens, refreshStats, seek } from "./timeline.js";
import { $ } from "./ui.js";

const SETTINGS_KEY = "llmri.live.settings";
const nowMs = () => performance.timeOrigin + performance.now();
// ---------------------------------------------------------------------------------------------
// the panel
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function buildPanel() {
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = "/static/live.css";
  document.head.appendChild(link);
  document.body.classList.add("live");
  const panel = el("section", "chat");
  panel.id = "chat";
  panel.setAttribute("aria-label", "live chat");
  panel.innerHTML = `
    <div class="chat-head">
      <h2>Live chat</h2>
      <span id="chat-model" class="chat-model"></span>
      <button id="chat-continue" class="chat-link" title="continue the conversation of the session shown in the viewer" hidden>continue this chat</button>
      <button id="chat-new" class="chat-link" title="start a new conversation">new chat</button>
      <button id="chat-gear" class="icon-btn" title="generation settings" aria-label="settings" aria-expanded="false">⚙</button>
    </div>
    <div id="chat-note" class="chat-note" hidden></div>
    <form id="chat-settings" class="chat-settings" hidden>
      <label>max tokens<input id="cs-max" type="number" min="1" max="2048" step="1" value="96"></label>
      <label>temperature<input id="cs-temp" type="number" min="0" max="5" step="0.1" value="0"></label>
      <label>top-p<input id="cs-topp" type="number" min="0.01" max="1" step="0.01" value="1"></label>
      <label>seed<input id="cs-seed" type="number" min="0" step="1" value="0"></label>
      <div class="cs-model-only cs-wide"><span class="cs-lbl">signals</span>
        <label class="check"><input type="checkbox" data-sig="resid" checked>resid</label>
        <label class="check"><input type="checkbox" data-sig="attn" checked>attn</label>
        <label class="check"><input type="checkbox" data-sig="mlp" checked>mlp</label>
      </div>
      <label class="cs-model-only cs-wide">reducer<select id="cs-reducer">
        <option value="random">random projection</option><option value="ipca">incremental PCA</option><option value="neurons">neurons (lossless)</option>
      </select></label>
      <label class="cs-wide">system prompt<textarea id="cs-system" rows="2" placeholder="optional"></textarea></label>
      <p class="cs-wide dim">Signals and reducer are fixed per session; changes apply to the next message.</p>
    </form>
    <div id="chat-log" class="chat-log" aria-live="polite"></div>
    <div id="chat-error" class="chat-error" role="alert" hidden></div>
    <form id="chat-form" class="chat-form">
      <textarea id="chat-input" rows="3" placeholder="Message the model…  (Enter to send, Shift+Enter for a new line)" aria-label="message"></textarea>
      <div class="chat-actions">
        <label class="check" title="move the playhead to each new token as it arrives"><input id="chat-follow" type="checkbox" checked> follow newest token</label>
        <span class="grow"></span>
        <button id="chat-stop" type="button" class="chat-btn stop" hidden>■ Stop</button>
        <button id="chat-send" type="submit" class="chat-btn send" disabled>Send</button>
      </div>
    </form>`;
  const layout = $("layout");
  layout.insertBefore(panel, layout.firstChild);
  emptyLog();
  loadSettings();
  $("chat-gear").onclick = () => {
    const s = $("chat-settings");
    s.hidden = !s.hidden;
    $("chat-gear").setAttribute("aria-expanded", String(!s.hidden));
  };
  $("chat-settings").addEventListener("change", saveSettings);
  $("chat-settings").addEventListener("submit", (e) => e.preventDefault());
  $("chat-new").onclick = newChat;
  $("chat-continue").onclick = () => restore(S.cur);
  setInterval(updateContinue, 700);
  $("chat-form").addEventListener("submit", (e) => { e.preventDefault(); send(); });
  $("chat-stop").onclick = () => wsSend({ type: "stop" });
  $("chat-follow").onchange = (e) => {
    C.follow = e.target.checked;
    if (C.follow && C.run && S.cur && S.cur.summary.key === C.run.key) seek(S.src.total - 1);
  };
  const input = $("chat-input");
  input.addEventListener("keydown", (e) => {
    e.stopPropagation(); // typing must not drive the viewer's keyboard shortcuts
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  for (const x of $("chat-settings").querySelectorAll("input, textarea, select")) x.addEventListener("keydown", (e) => e.stopPropagation());
  // the slider, keys and clicks that move the playhead away from the end stop following
  const unfollow = () => setTimeout(() => {
    if (C.run && S.cur && S.src && S.t < S.src.total - 1 && C.follow) setFollow(false);
  }, 0);
  $("slider").addEventListener("input", unfollow);
  $("tokens").addEventListener("click", unfollow);
  document.addEventListener("keydown", (e) => { if (["ArrowLeft", "Home"].includes(e.key)) unfollow(); });
}

function setFollow(on) {
  C.follow = on;
  $("chat-follow").checked = on;
}

function loadSettings() {
  let s = {};
  try { s = JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}"); } catch { s = {}; }
  if (s.max_new_tokens) $("cs-max").value = s.max_new_tokens;
  if (s.temperature !== undefined) $("cs-temp").value = s.temperature;
  if (s.top_p !== undefined) $("cs-topp").value = s.top_p;
  if (s.seed !== undefined) $("cs-seed").value = s.seed;
  if (s.reducer) $("cs-reducer").value = s.reducer;
  if (s.system !== undefined) $("cs-system").value = s.system;
  if (Array.isArray(s.signals)) for (const b of document.querySelectorAll("[data-sig]")) b.checked = s.signals.includes(b.dataset.sig);
}

function settings() {
  return {
    max_new_tokens: Number($("cs-max").value) || 96,
    temperature: Number($("cs-temp").value) || 0,
    top_p: Number($("cs-topp").value) || 1,
    seed: Number($("cs-seed").value) || 0,
    signals: Array.from(document.querySelectorAll("[data-sig]")).filter((b) => b.checked && !b.disabled).map((b) => b.dataset.sig),
    reducer: $("cs-reducer").value,
    conversation: C.conversation,
    turn: C.turn,
  };
}

function saveSettings() {
  const s = settings();
  s.system = $("cs-system").value;
  try { localStorage.setItem(SETTINGS_KEY, JSON.stringify(s)); } catch { /* private mode */ }
}

function emptyLog() {
  const log = $("chat-log");
  log.innerHTML = "";
  const hint = el("div", "chat-empty");
  hint.innerHTML = `<b>Ask the model something.</b><br>Its answer streams in token by token while each token's
    activations light up on the left; every answer is saved as a session you can scrub afterwards.`;
  log.appendChild(hint);
}

function bubble(role, text, who) {
  const log = $("chat-log");
  const hint = log.querySelector(".chat-empty");
  if (hint) hint.remove();
  const b = el("div", `chat-msg ${role}`);
  const head = el("div", "who", who || (role === "user" ? "you" : role));
  const body = el("div", "body", text);
  const meta = el("div", "meta");
  b.append(head, body, meta);
  log.appendChild(b);
  log.scrollTop = log.scrollHeight;
  return b;
}

function showError(msg) {
  const e = $("chat-error");
  e.textContent = msg || "";
  e.hidden = !msg;
}

function setBusy(busy) {
  $("chat-stop").hidden = !busy;
  $("chat-send").hidden = busy;
  $("chat-send").disabled = busy || !C.ws || C.ws.readyState !== 1;
}

function newChat() {
  if (C.run && C.run.mine) return;
  C.conv = [];
  C.shownKey = null;
  C.conversation = newId();
  C.turn = 0;
  emptyLog();
  showError("");
  $("chat-input").focus();
}

/** The conversation of a recorded session (its messages, then its answer), ready to continue. */
function restore(cur) {
  if (!cur || C.run || C.pendingSend || !S.cur || S.cur.summary.key !== cur.summary.key) return;
  const m = cur.meta || {};
  const specials = new Set((m.special_ids || []).map(Number));
  const answer = S.tokens.filter((t) => t.role === "generated" && !specials.has(t.id)).map((t) => t.text).join("");
  const msgs = (m.messages || []).filter((x) => x && x.role !== "system" && typeof x.content === "string");
  if (!msgs.length) return;
  const system = (m.messages || []).find((x) => x && x.role === "system");
  if (system && !$("cs-system").value) $("cs-system").value = system.content;
  C.conv = [...msgs.map((x) => ({ role: x.role, content: x.content })), { role: "assistant", content: answer }];
  C.conversation = typeof m.conversation === "string" ? m.conversation : newId();
  C.turn = Number.isInteger(m.turn) ? m.turn + 1 : msgs.filter((x) => x.role === "user").length;
  C.shownKey = cur.summary.key;
  $("chat-log").innerHTML = "";
  const name = String((m.model || {}).name || "model").split("/").pop();
  for (const x of C.conv) {
    const b = bubble(x.role, x.content, x.role === "assistant" ? name : undefined);
    if (x.role === "assistant") {
      const why = m.stop_reason ? ` · ${m.stop_reason}` : "";
      b.querySelector(".meta").textContent = `saved session${why}`;
    }
  }
  updateContinue();
}

function updateContinue() {
  const cur = S.cur;
  const can = !!cur && !C.run && !C.pendingSend && S.tokens.length > 0 && cur.summary.status !== "recording" &&
    Array.isArray((cur.meta || {}).messages) && cur.meta.messages.length > 0 && C.shownKey !== cur.summary.key &&
    (!!cur.meta.chat_only === (C.hello && C.hello.mode === "chat-only"));
  $("chat-continue").hidden = !can;
}

// ---------------------------------------------------------------------------------------------
// the socket
function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/api/live`);
  ws.binaryType = "arraybuffer";
  C.ws = ws;
  ws.onopen = () => { C.retry = 0; showError(""); setBusy(!!C.run); };
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") onJSON(JSON.parse(ev.data));
    else onBinary(ev.data);
  };
  ws.onclose = () => {
    if (C.ws !== ws) return;
    C.ws = null;
    setBusy(!!C.run);
    $("chat-send").disabled = true;
    const wait = Math.min(10, 1 + C.retry++);
    showError(`lost the connection to the viewer server; reconnecting in ${wait} s…`);
    setTimeout(connect, wait * 1000);
  };
}

function wsSend(msg) {
  if (!C.ws || C.ws.readyState !== 1) { showError("not connected to the viewer server"); return false; }
  C.ws.send(JSON.stringify(msg));
  return true;
}

function send() {
  const input = $("chat-input");
  const text = input.value.trim();
  if (!text || C.run || C.pendingSend) return;
  const s = settings();
  if (C.hello && C.hello.mode === "model" && !s.signals.length) { showError("choose at least one signal in ⚙ settings"); return; }
  const system = $("cs-system").value.trim();
  const messages = [...(system ? [{ role: "system", content: system }] : []), ...C.conv, { role: "user", content: text }];
  if (!wsSend({ type: "chat", messages, settings: s })) return;
  showError("");
  C.conv.push({ role: "user", content: text });
  C.pendingSend = { text, bubble: bubble("user", text) };
  input.value = "";
  setBusy(true);
}

function undoSend() {
  const p = C.pendingSend;
  C.pendingSend = null;
  if (!p) return;
  C.conv.pop();
  p.bubble.remove();
  if (!$("chat-input").value) $("chat-input").value = p.text;
  setBusy(!!C.run);
}

function onJSON(m) {
  if (m.type === "hello") {
    C.hello = m;
    C.me = m.you;
    describeMode(m);
    const running = m.running && m.running.session;
    if (C.run && C.run.key === running) {
      fillGap(true); // reconnected mid-answer: what streamed meanwhile is in the store
    } else {
      // the answer this page was showing ended while it was disconnected
      if (C.run) finishRun({ session: C.run.key, status: "complete", stop_reason: "" });
      if (running) startRun({ session: running, by: -1, messages: m.running.messages, special_ids: [], signals: [] });
    }
    setBusy(!!C.run);
  } else if (m.type === "started") {
    startRun(m);
  } else if (m.type === "done") {
    finishRun(m);
  } else if (m.type === "error") {
    showError(m.message);
    if (C.pendingSend && !C.run) undoSend();
    if (C.run && m.session === C.run.key) C.run.error = m.message;
  } else if (m.type === "busy") {
    showError(m.message);
    undoSend();
  } else if (m.type === "resync") {
    fillGap(true);
  }
}

function describeMode(h) {
  const chatOnly = h.mode === "chat-only";
  const name = String(h.model || "model").split("/").pop(); // servers may name a model by its file path
  $("chat-model").textContent = chatOnly ? `${name} · chat-only` : `${name} · ${h.n_layers || "?"} layers`;
  $("chat-model").title = chatOnly ? `OpenAI-compatible server ${h.url}` : `${h.model} (${h.backend} backend)`;
  for (const x of document.querySelectorAll(".cs-model-only")) x.hidden = chatOnly;
  for (const b of document.querySelectorAll("[data-sig]")) {
    b.disabled = !chatOnly && !(h.signals || []).includes(b.dataset.sig);
  }
  const note = $("chat-note");
  note.hidden = !chatOnly;
  if (chatOnly) {
    note.innerHTML = "";
    note.append(
      el("b", "", "Chat-only mode: no activations. "),
      document.createTextNode(`Answers come from ${h.url}; the frames are placeholders, but each token's probability, ` +
        "entropy and top alternatives show in the timeline and the Token panel."),
    );
  }
  $("chat-input").placeholder = `Message ${name}…  (Enter to send, Shift+Enter for a new line)`;
}

async function startRun(m) {
  const mine = m.by === C.me && !!C.pendingSend;
  if (mine) C.pendingSend = null;
  else {
    // another page started this turn: show its conversation here, read-only until it ends
    C.conv = (m.messages || []).filter((x) => x.role !== "system").map((x) => ({ ...x }));
    $("chat-log").innerHTML = "";
    for (const x of C.conv) bubble(x.role, x.content, x.role === "user" ? "user (another tab)" : undefined);
  }
  const model = String(m.model || (C.hello && C.hello.model) || "model").split("/").pop();
  const b = bubble("assistant", "", model);
  b.classList.add("streaming");
  const open = el("button", "chat-link", "open session");
  open.onclick = () => openSession(m.session);
  b.querySelector(".who").appendChild(open);
  C.run = { key: m.session, mine, bubble: b, specials: new Set((m.special_ids || []).map(Number)), answer: new Map(),
    n: 0, t0: performance.now(), first: 0, signals: m.signals || [], error: null };
  C.opened = false;
  C.shownKey = m.session;
  C.queue = [];
  C.buf.clear();
  setBusy(true);
  setFollow(true);
  await refreshSessions();
  if (!C.run || C.run.key !== m.session) return;
  await openSession(m.session).catch((e) => showError(`cannot open the new session: ${e.message}`));
  if (!C.run || C.run.key !== m.session) return;
  C.opened = true;
  const q = C.queue;
  C.queue = [];
  for (const x of q) applyFrames(x.header, x.data, x.rec);
  fillGap(false);
}

function finishRun(m) {
  const run = C.run;
  if (!run || run.key !== m.session) {
    if (C.pendingSend && !m.session) undoSend();
    return;
  }
  for (const x of C.queue.splice(0)) applyFrames(x.header, x.data, x.rec);
  const b = run.bubble;
  b.classList.remove("streaming");
  const text = answerText(run);
  const secs = (performance.now() - (run.first || run.t0)) / 1000;
  const gen = run.answer.size;
  const reasons = { eos: "finished", max_new_tokens: "max tokens reached", stopped: "stopped", stop_string: "stop string" };
  // an error's words are in the error box below the log: the bubble only says that it failed
  const why = m.status !== "complete" || (m.stop_reason || "").startsWith("error") ? "failed" : reasons[m.stop_reason] || "done";
  const rate = gen > 1 && secs > 0 ? ` · ${(gen / secs).toFixed(1)} tok/s` : "";
  b.querySelector(".meta").textContent = `${gen} token${gen === 1 ? "" : "s"}${rate} · ${why}`;
  if (why === "failed") b.classList.add("failed");
  if (why === "failed" && !text) b.remove(); // nothing was answered: the error box says why
  if (m.status === "complete" || text) {
    C.conv.push({ role: "assistant", content: text });
    C.turn += 1;
  } else if (run.mine && C.conv.length && C.conv[C.conv.length - 1].role === "user") {
    // nothing was answered: take the message back so the next send does not carry it twice
    const last = C.conv.pop();
    const userBubbles = $("chat-log").querySelectorAll(".chat-msg.user");
    if (userBubbles.length) userBubbles[userBubbles.length - 1].classList.add("failed");
    if (!$("chat-input").value) $("chat-input").value = last.content;
  }
  C.run = null;
  C.opened = false;
  setBusy(false);
  if (S.cur && S.cur.summary.key === m.session) {
    S.cur.summary.status = m.status;
    setBadge(m.status);
    fillGap(false);
    refreshStats(true);
  }
  refreshSessions();
}

function answerText(run) {
  const idx = Array.from(run.answer.keys()).sort((a, b) => a - b);
  return idx.map((i) => run.answer.get(i)).join("");
}

// ---------------------------------------------------------------------------------------------
// frames
function onBinary(buf) {
  const tArrive = nowMs();
  let msg;
  try { msg = decodeArray(buf); } catch (e) { console.warn("live: bad message", e); return; }
  const { header, data } = msg;
  if (!C.run || header.session !== C.run.key) return;
  const rec = { start: header.start, stop: header.stop, t_model: header.t_model * 1000, t_arrive: tArrive, t_shown: 0 };
  if (C.arrivals.length < 20000) C.arrivals.push(rec);
  if (!C.opened) { C.queue.push({ header, data, rec }); return; }
  applyFrames(header, data, rec);
}

function insertFrame(src, sig, t, values) {
  const c = Math.floor(t / src.chunk);
  const key = src.key(sig, c);
  const hit = LRU.get(key);
  if (!hit) {
    if (t === c * src.chunk) LRU.set(key, { start: t, stop: t + 1, data: Float32Array.from(values) });
    return;
  }
  if (hit.stop !== t) return; // a gap (or a frame already cached): the REST route fills it when it is needed
  const grown = new Float32Array(hit.data.length + values.length);
  grown.set(hit.data);
  grown.set(values, hit.data.length);
  LRU.set(key, { start: hit.start, stop: t + 1, data: grown });
}

function applyFrames(h, data, rec) {
  const run = C.run;
  if (!run) return;
  const n = h.stop - h.start;
  for (const t of h.tokens) {
    if (t.role === "generated") {
      if (!run.first) run.first = performance.now();
      if (!run.specials.has(t.id)) run.answer.set(t.index, t.text);
    }
  }
  const current = S.cur && S.src && S.cur.summary.key === h.session;
  if (current) {
    const src = S.src;
    const sigs = h.signals || [];
    if (sigs.length && src.frameSize) {
      const per = src.frameSize;
      for (let i = 0; i < n; i++) {
        for (let j = 0; j < sigs.length; j++) {
          const o = (i * sigs.length + j) * per;
          insertFrame(src, sigs[j], h.start + i, data.subarray(o, o + per));
        }
      }
    }
    for (const t of h.tokens) if (t.index >= S.tokens.length) C.buf.set(t.index, t);
    pump();
    const before = grow(h.stop);
    const following = C.follow && (before === 0 || S.t >= before - 1);
    if (following) seek(h.stop - 1); // the frame is cached: it is drawn now, before the text below
  }
  // the token's text, after its frame
  run.bubble.querySelector(".body").textContent = answerText(run);
  run.n = Math.max(run.n, h.stop);
  const log = $("chat-log");
  if (log.scrollHeight - log.scrollTop - log.clientHeight < 80) log.scrollTop = log.scrollHeight;
  if (rec) rec.t_shown = nowMs();
}

/** Append buffered tokens to the viewer's token strip in order. */
function pump() {
  for (const k of C.buf.keys()) if (k < S.tokens.length) C.buf.delete(k);
  const out = [];
  while (C.buf.has(S.tokens.length + out.length)) {
    const i = S.tokens.length + out.length;
    out.push(C.buf.get(i));
    C.buf.delete(i);
  }
  if (out.length) appendTokens(out);
  if (C.buf.size) fillGap(false);
}

/** Tokens this page missed (it fell behind, or joined mid-answer) come from the store over REST. */
async function fillGap(force) {
  if (C.filling || !S.cur) return;
  if (!force && !C.buf.size && !(C.run === null)) return;
  const key = S.cur.summary.key;
  C.filling = true;
  try {
    const res = await getJSON(`${sessionUrl(S.cur.summary)}/tokens?start=${S.tokens.length}`);
    if (!S.cur || S.cur.summary.key !== key) return;
    const add = res.tokens.filter((t) => t.index >= S.tokens.length).sort((a, b) => a.index - b.index);
    const seq = [];
    for (const t of add) { if (t.index !== S.tokens.length + seq.length) break; seq.push(t); }
    if (seq.length) appendTokens(seq);
    grow(res.total);
    if (!seq.length && (C.buf.size || force) && C.run) setTimeout(() => fillGap(force), 400);
  } catch (e) {
    console.warn("live: cannot fill the gap", e);
  } finally {
    C.filling = false;
  }
  if (C.buf.size) {
    for (const k of C.buf.keys()) if (k < S.tokens.length) C.buf.delete(k);
    if (C.buf.has(S.tokens.length)) pump();
  }
}

// ---------------------------------------------------------------------------------------------
async function main() {
  const info = await getJSON("/api/info").catch(() => null);
  if (!info || !info.live) return;
  buildPanel();
  window.llmri.live = C; // tests and benchmarks read C.arrivals, C.run
  await Promise.race([ready, new Promise((r) => setTimeout(r, 10000))]); // the viewer's first session, if it opens
  // the page is laid out again now that the chat panel takes a column
  window.dispatchEvent(new Event("resize"));
  const cur = S.cur;
  if (cur && cur.meta && cur.meta.live && cur.summary.status !== "recording") restore(cur);
  connect();
}

main().catch((e) => console.error("live chat:", e));

