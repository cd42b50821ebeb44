// Live chat, the frames: each answer's frames arrive with their tokens in one binary message (the replay
// encoding), go straight into the frame cache and are drawn before the token's text is shown.
import { LRU, decodeArray, getJSON, sessionUrl } from "./api.js";
import { S, chat as C, grow } from "./state.js";
import { appendTokens } from "./timeline.js";
import { $ } from "./ui.js";

const nowMs = () => performance.timeOrigin + performance.now();

export function onBinary(buf) {
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

export function applyFrames(h, data, rec) {
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
    grow(h.stop); // a playhead on the newest frame follows it: cached, it is drawn now, before the text below
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
export async function fillGap(force) {
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

export function answerText(run) {
  const idx = Array.from(run.answer.keys()).sort((a, b) => a - b);
  return idx.map((i) => run.answer.get(i)).join("");
}

