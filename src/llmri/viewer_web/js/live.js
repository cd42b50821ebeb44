// @ts-check
// Live chat: a chat panel that talks to the server's /api/live WebSocket (see llmri/viewer/live.py for the
// protocol). Each answer is recorded as a session, opened in the viewer while it streams in. This module is the
// socket and the run; the panel is livepanel.js, the frames liveframes.js, their state `chat` in state.js.
import { getJSON } from "./api.js";
import { putLiveFeatures } from "./features.js";
import { answerText, endFrames, fillGap, framesOpened, onBinary, startFrames } from "./liveframes.js";
import { applyDefaults, bubble, buildPanel, describeMode, el, emptyLog, partOf, setBusy, setFollow, settings, showError, updateContinue } from "./livepanel.js";
import { addRerun, buildSteer, describeSteer, pairBubbles, steerSpec } from "./livesteer.js";
import { putLive } from "./readoutcache.js";
import { openSession, refreshSessions, setStatus } from "./session.js";
import { chat, emit, newId, on, ready, view } from "./state.js";
import { refreshStats } from "./timeline.js";
import { $, errorText } from "./ui.js";

/** @typedef {{role: string, content: string}} Message */
/**
 * The server's "started": an answer began (this page's, or another's).
 * @typedef {{session: string, by: number, messages?: Message[], model?: string, special_ids?: number[], signals?: string[]}} Started
 */
/** The server's "done": an answer ended. @typedef {{session: string, status: string, stop_reason?: string}} Done */

// ---------------------------------------------------------------------------------------------
// the socket
function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/api/live`);
  ws.binaryType = "arraybuffer";
  chat.ws = ws;
  ws.onopen = () => { chat.retry = 0; showError(""); setBusy(!!chat.run); };
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") onJSON(JSON.parse(ev.data));
    // binaryType "arraybuffer": the frames
    else onBinary(ev.data);
  };
  ws.onclose = () => {
    if (chat.ws !== ws) return;
    chat.ws = null;
    setBusy(!!chat.run);
    $("chat-send", HTMLButtonElement).disabled = true;
    const wait = Math.min(10, 1 + chat.retry++);
    showError(`lost the connection to the viewer server; reconnecting in ${wait} s…`);
    setTimeout(connect, wait * 1000);
  };
}

/** @param {object} msg */
function wsSend(msg) {
  if (!chat.ws || chat.ws.readyState !== 1) { showError("not connected to the viewer server"); return false; }
  chat.ws.send(JSON.stringify(msg));
  return true;
}

function send() {
  const input = $("chat-input", HTMLTextAreaElement);
  const text = input.value.trim();
  if (!text || chat.run || chat.pendingSend) return;
  const s = settings();
  if (chat.hello && chat.hello.mode === "model" && !s.signals.length) { showError("choose at least one signal in ⚙ settings"); return; }
  let steer;
  try { steer = steerSpec(); } catch (e) { showError(errorText(e)); return; }
  const system = $("cs-system", HTMLTextAreaElement).value.trim();
  const messages = [...(system ? [{ role: "system", content: system }] : []), ...chat.conv, { role: "user", content: text }];
  if (!wsSend({ type: "chat", messages, settings: steer ? { ...s, steer } : s })) return;
  showError("");
  chat.conv.push({ role: "user", content: text });
  chat.pendingSend = { text, bubble: bubble("user", text) };
  input.value = "";
  setBusy(true);
}

/** "re-run steered" under answer `key` (bubble `b`): its question again, steered, streamed beside it.
 * @param {string} key @param {HTMLElement} b */
function rerunSteered(key, b) {
  if (chat.run || chat.pendingSend) return;
  let steer;
  try { steer = steerSpec(); } catch (e) { showError(errorText(e)); return; }
  if (!steer) { $("chat-steer").hidden = false; showError("choose what to steer with in the steering panel"); return; }
  if (!wsSend({ type: "chat", rerun: key, settings: { steer } })) return;
  showError("");
  chat.pendingSend = { text: "", bubble: el("span"), pairWith: b };
  setBusy(true);
}

function undoSend() {
  const p = chat.pendingSend;
  chat.pendingSend = null;
  if (!p) return;
  if (p.pairWith) { setBusy(!!chat.run); return; } // a re-run took nothing from the conversation
  chat.conv.pop();
  p.bubble.remove();
  const input = $("chat-input", HTMLTextAreaElement);
  if (!input.value) input.value = p.text;
  setBusy(!!chat.run);
}

/** A JSON message of the live socket, as the server sends it (llmri/viewer/live: hello, started, done, error,
 * busy, resync, readouts). @param {any} m */
function onJSON(m) {
  if (m.type === "hello") {
    chat.hello = m;
    chat.me = m.you;
    applyDefaults(m.defaults);
    describeMode(m);
    describeSteer(m);
    const running = m.running && m.running.session;
    if (chat.run && chat.run.key === running) {
      fillGap(true); // reconnected mid-answer: what streamed meanwhile is in the store
    } else {
      // the answer this page was showing ended while it was disconnected
      if (chat.run) finishRun({ session: chat.run.key, status: "complete", stop_reason: "" });
      if (running) startRun({ session: running, by: -1, messages: m.running.messages, special_ids: [], signals: [] });
    }
    setBusy(!!chat.run);
  } else if (m.type === "started") {
    startRun(m);
  } else if (m.type === "done") {
    finishRun(m);
  } else if (m.type === "error") {
    showError(m.message);
    if (chat.pendingSend && !chat.run) undoSend();
    if (chat.run && m.session === chat.run.key) chat.run.error = m.message;
  } else if (m.type === "busy") {
    showError(m.message);
    undoSend();
  } else if (m.type === "resync") {
    fillGap(true);
  } else if (m.type === "readouts") {
    putLive(m); // before the frames they belong to: the lens and attention panels draw the newest token from it
    putLiveFeatures(m); // its SAE rows, for the features panel
    emit("readouts", m.session, m.stop - 1);
  }
}

/** @param {Started} m */
async function startRun(m) {
  const mine = m.by === chat.me && !!chat.pendingSend;
  const pairWith = mine && chat.pendingSend ? chat.pendingSend.pairWith : undefined;
  if (mine) chat.pendingSend = null;
  else {
    // another page started this turn: show its conversation here, read-only until it ends
    chat.conv = (m.messages || []).filter((x) => x.role !== "system").map((x) => ({ ...x }));
    $("chat-log").innerHTML = "";
    for (const x of chat.conv) bubble(x.role, x.content, x.role === "user" ? "user (another tab)" : undefined);
  }
  const model = String(m.model || (chat.hello && chat.hello.model) || "model").split("/").pop() || "model";
  const b = bubble("assistant", "", pairWith ? `${model} · steered` : model);
  b.classList.add("streaming");
  if (pairWith) pairBubbles(pairWith, b);
  const open = el("button", "chat-link", "open session");
  open.onclick = () => openSession(m.session);
  partOf(b, ".who").appendChild(open);
  chat.run = { key: m.session, mine, bubble: b, specials: new Set((m.special_ids || []).map(Number)), answer: new Map(),
    n: 0, t0: performance.now(), first: 0, signals: m.signals || [], error: null, rerun: !!pairWith };
  chat.shownKey = m.session;
  startFrames();
  setBusy(true);
  setFollow(true);
  await refreshSessions();
  if (!chat.run || chat.run.key !== m.session) return;
  await openSession(m.session).catch((e) => showError(`cannot open the new session: ${errorText(e)}`));
  if (!chat.run || chat.run.key !== m.session) return;
  framesOpened();
}

/** @param {Done} m */
function finishRun(m) {
  const run = chat.run;
  if (!run || run.key !== m.session) {
    if (chat.pendingSend && !m.session) undoSend();
    return;
  }
  endFrames();
  const b = run.bubble;
  b.classList.remove("streaming");
  const text = answerText(run);
  const secs = (performance.now() - (run.first || run.t0)) / 1000;
  const gen = run.answer.size;
  /** @type {Record<string, string>} */
  const reasons = { eos: "finished", max_new_tokens: "max tokens reached", stopped: "stopped", stop_string: "stop string" };
  // an error's words are in the error box below the log: the bubble only says that it failed
  const why = m.status !== "complete" || (m.stop_reason || "").startsWith("error") ? "failed" : reasons[m.stop_reason || ""] || "done";
  const rate = gen > 1 && secs > 0 ? ` · ${(gen / secs).toFixed(1)} tok/s` : "";
  partOf(b, ".meta").textContent = `${gen} token${gen === 1 ? "" : "s"}${rate} · ${why}`;
  if (why === "failed") b.classList.add("failed");
  if (why === "failed" && !text) b.remove(); // nothing was answered: the error box says why
  if (m.status === "complete" && !run.rerun) addRerun(b, m.session, rerunSteered);
  if (run.rerun) {
    // a steered re-run sits beside its answer: the conversation goes on from the original
  } else if (m.status === "complete" || text) {
    chat.conv.push({ role: "assistant", content: text });
    chat.turn += 1;
  } else if (run.mine && chat.conv.length && chat.conv[chat.conv.length - 1].role === "user") {
    // nothing was answered: take the message back so the next send does not carry it twice
    const last = chat.conv.pop();
    const userBubbles = $("chat-log").querySelectorAll(".chat-msg.user");
    if (userBubbles.length) userBubbles[userBubbles.length - 1].classList.add("failed");
    const input = $("chat-input", HTMLTextAreaElement);
    if (last && !input.value) input.value = last.content;
  }
  chat.run = null;
  setBusy(false);
  if (view.cur && view.cur.summary.key === m.session) {
    setStatus(m.status);
    fillGap(false);
    refreshStats(true);
  }
  refreshSessions();
}

// ---------------------------------------------------------------------------------------------
// the conversation
/** A new conversation: the log emptied, a new id. */
function newChat() {
  if (chat.run && chat.run.mine) return;
  chat.conv = [];
  chat.shownKey = null;
  chat.conversation = newId();
  chat.turn = 0;
  emptyLog();
  showError("");
  $("chat-input").focus();
}

/** The conversation of a recorded session (its messages, then its answer), ready to continue.
 * @param {import("./state.js").Current | null} cur */
function restore(cur) {
  if (!cur || chat.run || chat.pendingSend || !view.cur || view.cur.summary.key !== cur.summary.key) return;
  const m = cur.meta || {};
  const specials = new Set((m.special_ids || []).map(Number));
  const answer = view.tokens.filter((t) => t.role === "generated" && !specials.has(t.id)).map((t) => t.text).join("");
  const msgs = (m.messages || []).filter((x) => x && x.role !== "system" && typeof x.content === "string");
  if (!msgs.length) return;
  const system = (m.messages || []).find((x) => x && x.role === "system");
  const systemBox = $("cs-system", HTMLTextAreaElement);
  if (system && !systemBox.value) systemBox.value = system.content;
  chat.conv = [...msgs.map((x) => ({ role: x.role, content: x.content })), { role: "assistant", content: answer }];
  chat.conversation = typeof m.conversation === "string" ? m.conversation : newId();
  chat.turn = typeof m.turn === "number" && Number.isInteger(m.turn) ? m.turn + 1 : msgs.filter((x) => x.role === "user").length;
  chat.shownKey = cur.summary.key;
  $("chat-log").innerHTML = "";
  const name = String((m.model || {}).name || "model").split("/").pop();
  for (const x of chat.conv) {
    const b = bubble(x.role, x.content, x.role === "assistant" ? name : undefined);
    if (x.role === "assistant") {
      const why = m.stop_reason ? ` · ${m.stop_reason}` : "";
      partOf(b, ".meta").textContent = `saved session${why}`;
    }
  }
  updateContinue();
}

// ---------------------------------------------------------------------------------------------
async function main() {
  const info = await getJSON("/api/info").catch(() => null);
  if (!info || !info.live) return;
  buildPanel({ send, stop: () => wsSend({ type: "stop" }), newChat, restore });
  buildSteer();
  window.llmri.live = chat; // tests and benchmarks read chat.arrivals, chat.run
  await Promise.race([ready, new Promise((r) => setTimeout(r, 10000))]); // the viewer's first session, if it opens
  // the page is laid out again now that the chat panel takes a column
  window.dispatchEvent(new Event("resize"));
  const restorable = (/** @type {import("./state.js").Current | null} */ s) => !!(s && s.meta && s.meta.live && s.summary.status !== "recording");
  if (restorable(view.cur)) restore(view.cur);
  // Its conversation still comes back for a first session that opened after that wait (a slow
  // page), or that the server still called recording (a reload just as the answer ended: the
  // server reopens a recording session at most every poll interval), once its status changes.
  if (!chat.shownKey) {
    const late = (/** @type {import("./state.js").Current} */ opened) => { if (!chat.shownKey && restorable(opened)) restore(opened); };
    on("open", late);
    on("status", late);
  }
  connect();
}

main().catch((e) => console.error("live chat:", e));
