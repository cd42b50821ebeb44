// @ts-check
// Sessions: the list (polled), opening one, and following one while it is being recorded.
import { FrameSource, getJSON, sessionUrl } from "./api.js";
import { setDiff } from "./compare.js";
import { showOverflowBadge } from "./overflow.js";
import { emit, on, view } from "./state.js";
import { buildSignalModes, layout, loadStats, resetFrames } from "./tiles.js";
import { appendTokens, drawSparklines, seek, setTokens, stop, updateTotal } from "./timeline.js";
import { $, banner, errorText, esc, fillSelect } from "./ui.js";

/** @typedef {import("./state.js").Summary} Summary */
/** @typedef {import("./state.js").Current} Current */

// ---------------------------------------------------------------------------------------------
// the session list

/** Lists the sessions again; true when the list changed (a session came, went, grew or ended). */
export async function refreshSessions() {
  let res, shown;
  const query = view.query;
  try {
    res = await getJSON("/api/sessions");
    // the picker lists what matches the search box (the server searches titles, prompts, ids, metadata)
    shown = query ? (await getJSON(`/api/sessions?${searchParams(query)}`)).sessions : res.sessions;
  } catch (e) {
    banner(`cannot list sessions: ${errorText(e)}`, "error");
    return false;
  }
  if (query !== view.query) return false; // the search changed meanwhile: its own refresh fills the picker
  const sig = (/** @type {Summary[]} */ l) => l.map((s) => `${s.key}:${s.n_frames}:${s.status}`).join("|");
  const changed = sig(res.sessions) !== sig(view.sessions);
  const shownChanged = sig(shown) !== sig(view.shown);
  view.sessions = res.sessions;
  view.shown = shown;
  view.stores = res.stores;
  $("study-btn").hidden = !view.sessions.some((s) => s.study);
  if (shownChanged || (query && !shown.length)) {
    const select = $("session-select", HTMLSelectElement);
    fillSelect(select, view.shown, view.cur && view.cur.summary.key);
    if (query && !shown.length) select.innerHTML = "<option value=\"\">(no session matches)</option>";
  }
  if (changed) {
    if (view.diff === "session") fillSelect($("diff-session", HTMLSelectElement), view.sessions, view.diffSummary && view.diffSummary.key, view.cur && view.cur.summary.key);
  }
  const stores = /** @type {import("./state.js").StoreInfo[]} */ (res.stores);
  const problems = stores.flatMap((s) => s.problems.map((p) => `${s.label}: ${p}`));
  if (problems.length && !$("banner").textContent) banner(`some sessions could not be read — ${problems.join("; ")}`);
  return changed;
}

/**
 * The search box's text as the list's query: each ``key=value`` word is an exact metadata filter
 * (``meta.key=value``: a study prompt's fields, ``client``, ``prompt_id``...), the other words the text
 * searched (``q``). At most 8 filters (the server's bound); a longer list is the server's 400.
 * @param {string} text
 */
export function searchParams(text) {
  const params = new URLSearchParams();
  const words = [];
  for (const word of text.split(/\s+/).filter(Boolean)) {
    const m = /^([A-Za-z_][\w.-]*)=(.*)$/.exec(word);
    if (m) params.append(`meta.${m[1]}`, m[2]);
    else words.push(word);
  }
  if (words.length) params.set("q", words.join(" "));
  return params.toString();
}

/** The search box: the picker lists the sessions the server finds for its text (after a short pause in typing). */
export function wireSearch() {
  const box = $("session-search", HTMLInputElement);
  let timer = 0;
  box.oninput = () => {
    clearTimeout(timer);
    timer = window.setTimeout(() => {
      view.query = box.value.trim().slice(0, 200);
      refreshSessions();
    }, 250);
  };
}

// ---------------------------------------------------------------------------------------------
// opening a session

/** A message in place of the tiles (html), or the tiles again (""). @param {string} html */
function showEmpty(html) {
  const e = $("empty");
  e.innerHTML = html;
  e.hidden = !html;
  $("canvas-wrap").hidden = !!html;
}

/** @param {string} s */
function shellQuote(s) {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`;
}

export function emptyStoreState() {
  const label = view.stores.map((s) => s.label).join(", ") || "this store";
  showEmpty(`<h1>No sessions yet</h1><p>${esc(label)} holds no sessions. Record one and it shows up here:</p>
    <code>llmri capture "Why is the sky blue?" -o ${esc(shellQuote(view.stores[0] ? view.stores[0].label : "run.zarr"))}</code>
    <p class="dim">This page checks for new sessions every few seconds.</p>`);
  document.body.classList.add("no-session");
  const sel = $("session-select", HTMLSelectElement);
  sel.innerHTML = "<option>(no sessions yet)</option>";
  sel.disabled = true;
  $("session-info").textContent = "";
  $("status-badge").hidden = true;
  $("tokens").innerHTML = "";
  $("counter").textContent = "–";
  $("token-info").innerHTML = "";
}

/** Show session `key` at token t0 (a session being recorded opens on its newest frame, and follows it).
 * @param {string} key */
export async function openSession(key, t0 = 0) {
  const seq = ++view.openSeq;
  view.loaded = null;
  const summary = view.sessions.find((s) => s.key === key);
  if (!summary) return;
  stop();
  if (view.ws) { view.ws.close(); view.ws = null; }
  /** @type {Current} */
  const detail = await getJSON(sessionUrl(summary));
  if (seq !== view.openSeq) return;
  const cur = { summary: detail.summary, meta: detail.meta, grid: detail.grid };
  view.cur = cur;
  document.body.classList.remove("no-session");
  const select = $("session-select", HTMLSelectElement);
  select.disabled = false;
  const src = new FrameSource(detail.summary, detail.meta);
  view.src = src;
  src.ongrow = (n, before) => { // from a progress message, live frames or a chunk's header alike
    if (view.src !== src) return;
    cur.summary.n_frames = n;
    emit("grow", n, before);
  };
  resetFrames();
  setDiff("off");
  select.value = key;
  showSessionInfo(detail);
  const tok = await getJSON(`${sessionUrl(summary)}/tokens`);
  if (seq !== view.openSeq) return;
  setTokens(tok.tokens);
  buildSignalModes();
  showSessionState(detail);
  updateTotal(src.total, true);
  const readouts = detail.summary.readouts || [];
  $("rside").hidden = !readouts.length; // the lens and attention column, where the session has them
  $("lens-panel").hidden = !readouts.includes("lens");
  $("attn-panel").hidden = !readouts.includes("attention");
  $("layout").classList.toggle("with-readouts", readouts.length > 0);
  layout();
  await loadStats();
  if (seq !== view.openSeq) return;
  const total = src.total; // a chunk's header may have raised it since the summary came
  if (detail.summary.status === "recording") {
    followLive(detail.summary);
    t0 = total - 1;
  }
  emit("open", cur); // the readout panels: which this session has, its markers and lens strip
  seek(Math.min(Math.max(0, t0), Math.max(0, total - 1)));
  drawSparklines();
  view.loaded = key; // fully open: tokens, layout, stats and the first frame requested
}

/** The top bar: title, model, backend, shape, token count, date and status. @param {Current} detail */
function showSessionInfo(detail) {
  const m = detail.meta;
  const model = m.model || {};
  const red = m.reducer || {};
  document.title = `${detail.summary.title || detail.summary.id} · llmri`;
  const chatOnly = !!detail.summary.chat_only;
  document.body.classList.toggle("chat-only", chatOnly);
  const shape = chatOnly
    ? "chat-only, no activations"
    : `${m.layers ? m.layers.length : 0} layers · ${esc(red.kind || "–")} ${m.tile ? m.tile.join("×") : ""}`;
  $("session-info").innerHTML =
    `<b>${esc(model.name || "?")}</b> · ${esc(m.backend || "")} · ${shape} · ` +
    `<span id="ntok">${detail.summary.n_frames}</span> tokens · ${esc(
      (m.created || "").replace("T", " ").replace("+00:00", " UTC"),
    )}`;
  setBadge(detail.summary.status);
  showOverflowBadge($("overflow-badge"), m);
}

/** Banner and placeholder for a session that is interrupted, chat-only, or has no frame yet. @param {Current} detail */
function showSessionState(detail) {
  const m = detail.meta;
  const n = detail.summary.n_frames;
  banner("");
  if (detail.summary.status === "interrupted") {
    const why = m.stop_reason ? ` (${m.stop_reason})` : "";
    banner(`This session was interrupted after ${n} token${n === 1 ? "" : "s"}${why}: showing what was committed.`);
  }
  if (detail.summary.chat_only) {
    showEmpty(`<h1>Chat-only session</h1><p>Recorded through <b>${esc(m.backend || "a chat API")}</b>, which gives tokens and
      log-probabilities but no activations, so there are no frames to draw. The token strip and the Token panel still work.</p>`);
  } else if (n === 0) {
    showEmpty(detail.summary.status === "recording"
      ? `<h1>Waiting for the first frame…</h1><p>This session is being recorded; frames appear as they are committed.</p>`
      : `<h1>No frames</h1><p>This session ended (${esc(detail.summary.status)}) before its first frame was committed.</p>`);
  } else {
    showEmpty("");
  }
}

/** The session shown has n frames (a replay's progress message, live chat's frames, a gap filled over REST):
 * its source's total moves (FrameSource.grow, whose ongrow emits "grow"). Returns the total before. @param {number} n */
export function grow(n) {
  return view.src ? view.src.grow(n) : 0;
}

/** The session shown is now `status` (its recording ended, or the live chat's answer did): the badge, and
 * "status" for the chat panel (a live answer that ended can be picked up again). @param {string} status */
export function setStatus(status) {
  if (!view.cur || status === view.cur.summary.status) return;
  view.cur.summary.status = status;
  setBadge(status);
  emit("status", view.cur);
}

/** @param {string} status */
function setBadge(status) {
  const b = $("status-badge");
  b.hidden = false;
  b.textContent = status;
  b.className = `badge ${status}`;
}

// the first frame of a session opened while it had none: the tiles take the place of "waiting"
on("grow", (_, before) => {
  if (before === 0 && view.cur && (view.cur.meta.signals || []).length) { showEmpty(""); layout(); }
});

// ---------------------------------------------------------------------------------------------
// a session being recorded (by another process): its /live socket says how far it got

/** @param {Summary} summary */
function followLive(summary) {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}${sessionUrl(summary)}/live`);
  view.ws = ws;
  ws.onclose = (e) => {
    // the server closes with 1000 once the session is no longer recording; anything else: try again
    const still = view.ws === ws && view.cur && view.cur.summary.key === summary.key && view.cur.summary.status === "recording";
    if (still && e.code !== 1000) setTimeout(() => { if (view.ws === ws) followLive(summary); }, 1500);
  };
  // One message at a time, in the order sent: a handler waits for the token text, and two handlers
  // interleaved there could finish out of order (the playhead follows on "grow", which only moves up).
  /** @type {Promise<void>} */
  let queue = Promise.resolve();
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    // a failed token fetch is retried by the next message, which asks from the same place
    queue = queue.then(() => onProgress(summary, msg)).catch((e) => console.warn("live: progress", e));
  };
}

/** @param {Summary} summary @param {{type: string, n_frames: number, status: string}} msg */
async function onProgress(summary, msg) {
  if (msg.type !== "progress" || !view.cur || view.cur.summary.key !== summary.key) return;
  if (msg.n_frames > view.tokens.length) {
    const tok = await getJSON(`${sessionUrl(summary)}/tokens?start=${view.tokens.length}`);
    if (!view.cur || view.cur.summary.key !== summary.key) return;
    appendTokens(tok.tokens.filter((/** @type {import("./state.js").Token} */ t) => t.index >= view.tokens.length));
  }
  grow(msg.n_frames); // the playhead on the newest frame follows (timeline.js), decided there and then
  if (msg.status !== view.cur.summary.status) {
    setStatus(msg.status);
    if (msg.status === "interrupted") banner(`This session was interrupted after ${msg.n_frames} tokens.`);
    refreshSessions();
  }
}
