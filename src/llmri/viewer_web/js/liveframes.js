// @ts-check
// Live chat, the frames: each answer's frames arrive with their tokens in one binary message (the replay
// encoding), go straight into the frame cache and are drawn before the token's text is shown.
import { LRU, decodeArray, getJSON, sessionUrl } from "./api.js";
import { grow } from "./session.js";
import { chat, view } from "./state.js";
import { appendTokens } from "./timeline.js";
import { partOf } from "./livepanel.js";
import { $ } from "./ui.js";

/** @typedef {import("./state.js").Token} Token */

const nowMs = () => performance.timeOrigin + performance.now();

/** One binary message of the live socket: an answer's frames with their tokens. @param {ArrayBuffer} buf */
export function onBinary(buf) {
  const tArrive = nowMs();
  let msg;
  try { msg = decodeArray(buf); } catch (e) { console.warn("live: bad message", e); return; }
  const { header, data } = msg;
  if (!chat.run || header.session !== chat.run.key) return;
  const rec = { start: header.start, stop: header.stop, t_model: header.t_model * 1000, t_arrive: tArrive, t_shown: 0 };
  if (chat.arrivals.length < 20000) chat.arrivals.push(rec);
  if (!chat.opened) { chat.queue.push({ header, data, rec }); return; }
  applyFrames(header, data, rec);
}

/** Frame t of signal `sig` into the frame cache, where it extends the chunk cached (or starts one).
 * @param {import("./api.js").FrameSource} src @param {string} sig @param {number} t @param {Float32Array} values */
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

/** A run starts: nothing of the last one's frames or tokens waits any more, and its session is not open yet. */
export function startFrames() {
  chat.opened = false;
  chat.queue = [];
  chat.buf.clear();
}

/** The run's session is open in the viewer: the frames that waited for it go in, and what was missed comes over REST. */
export function framesOpened() {
  chat.opened = true;
  const q = chat.queue;
  chat.queue = [];
  for (const x of q) applyFrames(x.header, x.data, x.rec);
  fillGap(false);
}

/** The run ended: the frames still waiting go in now (if its session is shown), and none are awaited after. */
export function endFrames() {
  for (const x of chat.queue.splice(0)) applyFrames(x.header, x.data, x.rec);
  chat.opened = false;
}

/** @param {import("./api.js").ArrayHeader} h @param {Float32Array} data @param {import("./state.js").Arrival} rec */
export function applyFrames(h, data, rec) {
  const run = chat.run;
  if (!run) return;
  const n = h.stop - h.start;
  for (const t of h.tokens) {
    if (t.role === "generated") {
      if (!run.first) run.first = performance.now();
      if (!run.specials.has(t.id)) run.answer.set(t.index, t.text);
    }
  }
  const src = view.cur && view.cur.summary.key === h.session ? view.src : null;
  if (src) {
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
    for (const t of h.tokens) if (t.index >= view.tokens.length) chat.buf.set(t.index, t);
    pump();
    grow(h.stop); // a playhead on the newest frame follows it: cached, it is drawn now, before the text below
  }
  // the token's text, after its frame
  partOf(run.bubble, ".body").textContent = answerText(run);
  run.n = Math.max(run.n, h.stop);
  const log = $("chat-log");
  if (log.scrollHeight - log.scrollTop - log.clientHeight < 80) log.scrollTop = log.scrollHeight;
  if (rec) rec.t_shown = nowMs();
}

/** Append buffered tokens to the viewer's token strip in order. */
function pump() {
  for (const k of chat.buf.keys()) if (k < view.tokens.length) chat.buf.delete(k);
  /** @type {Token[]} */
  const out = [];
  for (let i = view.tokens.length, t = chat.buf.get(i); t; t = chat.buf.get(++i)) {
    out.push(t);
    chat.buf.delete(i);
  }
  if (out.length) appendTokens(out);
  if (chat.buf.size) fillGap(false);
}

/** Tokens this page missed (it fell behind, or joined mid-answer) come from the store over REST.
 * @param {boolean} force */
export async function fillGap(force) {
  if (chat.filling || !view.cur) return;
  if (!force && !chat.buf.size && !(chat.run === null)) return;
  const key = view.cur.summary.key;
  chat.filling = true;
  try {
    const res = await getJSON(`${sessionUrl(view.cur.summary)}/tokens?start=${view.tokens.length}`);
    if (!view.cur || view.cur.summary.key !== key) return;
    /** @type {Token[]} */
    const tokens = res.tokens;
    const add = tokens.filter((t) => t.index >= view.tokens.length).sort((a, b) => a.index - b.index);
    const seq = [];
    for (const t of add) { if (t.index !== view.tokens.length + seq.length) break; seq.push(t); }
    if (seq.length) appendTokens(seq);
    grow(res.total);
    if (!seq.length && (chat.buf.size || force) && chat.run) setTimeout(() => fillGap(force), 400);
  } catch (e) {
    console.warn("live: cannot fill the gap", e);
  } finally {
    chat.filling = false;
  }
  if (chat.buf.size) {
    for (const k of chat.buf.keys()) if (k < view.tokens.length) chat.buf.delete(k);
    if (chat.buf.has(view.tokens.length)) pump();
  }
}

/** The answer's text so far, in token order. @param {import("./state.js").Run} run */
export function answerText(run) {
  const idx = Array.from(run.answer.keys()).sort((a, b) => a - b);
  return idx.map((i) => run.answer.get(i)).join("");
}

