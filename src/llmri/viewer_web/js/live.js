// Live chat: a chat panel that talks to the server's /api/live WebSocket (see llmri/viewer/live.py for the
// protocol). Each answer is recorded as a session, opened in the viewer while it streams in. This module is the
// socket and the run; the panel is livepanel.js, the frames liveframes.js, their state `chat` in state.js.
import { getJSON } from "./api.js";
import { applyFrames, answerText, fillGap, onBinary } from "./liveframes.js";
import { bubble, buildPanel, describeMode, el, restore, setBusy, setFollow, settings, showError } from "./livepanel.js";
import { openSession, refreshSessions, setBadge } from "./session.js";
import { putLive } from "./readouts.js";
import { S, chat as C, emit, on, ready } from "./state.js";
import { refreshStats } from "./timeline.js";
import { $ } from "./ui.js";

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
  } else if (m.type === "readouts") {
    putLive(m); // before the frames they belong to: the lens and attention panels draw the newest token from it
    emit("readouts", m.session, m.stop - 1);
  }
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

// ---------------------------------------------------------------------------------------------
async function main() {
  const info = await getJSON("/api/info").catch(() => null);
  if (!info || !info.live) return;
  buildPanel({ send, stop: () => wsSend({ type: "stop" }) });
  window.llmri.live = C; // tests and benchmarks read C.arrivals, C.run
  await Promise.race([ready, new Promise((r) => setTimeout(r, 10000))]); // the viewer's first session, if it opens
  // the page is laid out again now that the chat panel takes a column
  window.dispatchEvent(new Event("resize"));
  const restorable = (s) => !!(s && s.meta && s.meta.live && s.summary.status !== "recording");
  if (restorable(S.cur)) restore(S.cur);
  // Its conversation still comes back for a first session that opened after that wait (a slow
  // page), or that the server still called recording (a reload just as the answer ended: the
  // server reopens a recording session at most every poll interval), once its status changes.
  if (!C.shownKey) {
    const late = (opened) => { if (!C.shownKey && restorable(opened)) restore(opened); };
    on("open", late);
    on("status", late);
  }
  connect();
}

main().catch((e) => console.error("live chat:", e));
