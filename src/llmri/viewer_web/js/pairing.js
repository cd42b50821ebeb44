// @ts-check
// A run against its baseline (docs/interventions.md, "In the viewer"): a session that names the session it was run
// against (meta.baseline: llmri.rerun, a steered or patched run, a patching sweep's corrupt prompt) is compared with
// it as it opens. The server computes llmri.compare (GET /api/comparison); this module marks the divergence point
// (the first token whose text differs) on the timeline and draws the difference strip under the norm strip: token ×
// layer, one row per layer, coloured by the relative L2 |a − b| / |a| (or 1 − cosine) of the signal shown, each
// token's first changed layer marked: where the change starts to matter.
import { getArray } from "./api.js";
import { baselineOf, setDiff } from "./compare.js";
import { hideTip, showTip } from "./inspector.js";
import { on, view } from "./state.js";
import { beginLayerStrip, layerStripPlayhead, stripGeometry } from "./timeline.js";
import { $, dataOf, errorText, esc, fmt, oneLine, segment, setSeg } from "./ui.js";

/** The comparison shown (this module writes it; main.js hands it to tests as window.llmri.pair). */
export const pairState = {
  /** @type {string | null} */ key: null, // the session shown
  /** @type {string | null} */ base: null, // its baseline's key
  /** @type {string[]} */ signals: [],
  n: 0,
  L: 0,
  /** @type {Float32Array | null} */ data: null, // [2, signals, n, L]: cosine, rel_l2 (llmri.compare)
  /** @type {number | null} */ first: null, // the divergence point: the first token whose text differs
  metric: "rel_l2", // "rel_l2" | "cosine" (drawn as 1 − cosine)
  rows: 0, // the strip's rows as last drawn: one per layer
  /** @type {string} */ signal: "", // the signal last drawn
};

/** @param {string} text */
function say(text, kind = "") {
  const msg = $("pair-msg");
  msg.textContent = text;
  msg.className = kind ? `msg ${kind}` : "msg";
}

function clear() {
  Object.assign(pairState, { key: null, base: null, signals: [], n: 0, L: 0, data: null, first: null, rows: 0, signal: "" });
  $("diff-strip").hidden = true;
  $("pair-ticks").hidden = true;
  $("pair-tools").hidden = true;
  say("");
}

/** The session shown opened: compare it with its baseline, where it names one. */
async function load() {
  clear();
  const cur = view.cur;
  if (!cur || !cur.summary.baseline) return;
  const key = cur.summary.key;
  const base = baselineOf(cur.summary);
  if (!base) { say(`its baseline ${cur.summary.baseline} is not in the stores shown`, "error"); return; }
  // a run being recorded (a steered re-run streaming in) is compared once it has ended ("status")
  if (cur.summary.status === "recording") { say("compared with its baseline once it is recorded"); return; }
  say("comparing with its baseline…");
  try {
    const { header, data } = await getArray(`/api/comparison?a=${encodeURIComponent(key)}&b=${encodeURIComponent(base.key)}`);
    if (!view.cur || view.cur.summary.key !== key) return;
    const n = header.shape[2], L = header.shape[3];
    Object.assign(pairState, { key, base: base.key, signals: header.signals, n, L, data, first: header.first_divergence ?? null });
  } catch (e) {
    if (view.cur && view.cur.summary.key === key) say(`cannot compare with its baseline: ${errorText(e)}`, "error");
    return;
  }
  const first = pairState.first;
  say(`vs baseline “${oneLine((base.title || base.id).slice(0, 40))}” · ` +
    (first === null ? `same tokens for ${pairState.n}` : `texts diverge at token ${first}`), "ok");
  $("pair-tools").hidden = false;
  drawDiffStrip();
}

/** The signal the strip shows: the one on the canvas, else the first. */
function stripSignal() {
  return pairState.signals.includes(view.mode) ? view.mode : pairState.signals[0];
}

/** The value drawn for token t, layer l of signal index si (0: no change). @param {number} si @param {number} t @param {number} l */
function valueAt(si, t, l) {
  const { n, L, data, signals } = pairState;
  if (!data) return 0;
  const m = pairState.metric === "cosine" ? 0 : 1;
  const v = data[((m * signals.length + si) * n + t) * L + l];
  return m === 0 ? 1 - v : v;
}

/** @type {import("./timeline.js").LayerStrip | null} */
let stripImg = null;

export function drawDiffStrip() {
  const c = $("diff-strip", HTMLCanvasElement);
  const { n, L, data } = pairState;
  if (!data || !n || !L) { c.hidden = true; return; }
  c.hidden = false;
  const si = Math.max(0, pairState.signals.indexOf(stripSignal()));
  const { ctx, g, dpr, rowH, cssH } = beginLayerStrip(c, L, "diff");
  // one colour scale for the strip: its largest change (a change of a few per cent still shows)
  let top = 0;
  for (let t = 0; t < n; t++) for (let l = 0; l < L; l++) top = Math.max(top, valueAt(si, t, l));
  const lut = view.luts.energy || view.luts.grayscale;
  const total = Math.max(g.n, n);
  const W = g.W;
  for (let x = 0; x < W && top > 0; x++) {
    const a = Math.floor((x / W) * total), b = Math.max(a + 1, Math.floor(((x + 1) / W) * total));
    for (let l = 0; l < L; l++) {
      let v = -1;
      for (let t = a; t < b && t < n; t++) v = Math.max(v, valueAt(si, t, l));
      if (v <= 0) continue;
      const i = Math.max(0, Math.min(255, Math.round((v / top) * 255)));
      ctx.fillStyle = `rgb(${lut[3 * i]},${lut[3 * i + 1]},${lut[3 * i + 2]})`;
      ctx.fillRect(g.left + x, (L - 1 - l) * rowH, 1, rowH); // the last layer on top, as the lens strip
    }
  }
  if (W / Math.max(1, total) >= 3) { // each token's first changed layer, where a token has room
    ctx.fillStyle = "#ffffff";
    for (let t = 0; t < n; t++) {
      let l0 = 0;
      while (l0 < L && valueAt(si, t, l0) <= 0) l0++;
      if (l0 >= L) continue;
      const x0 = g.left + (t / total) * W, x1 = g.left + ((t + 1) / total) * W;
      ctx.fillRect(Math.round(x0 + 1), (L - 1 - l0) * rowH + rowH / 2 - 0.5, Math.max(1, Math.round(x1 - x0) - 2), 1.5);
    }
  }
  pairState.rows = L;
  pairState.signal = pairState.signals[si];
  c.dataset.rows = String(L);
  c.dataset.cols = String(n);
  c.dataset.signal = pairState.signals[si];
  stripImg = { img: ctx.getImageData(0, 0, c.width, c.height), rowH, n: total, W, left: g.left, dpr, cssH };
  drawPlayhead();
  drawDivergence();
}

function drawPlayhead() {
  if (stripImg && !$("diff-strip").hidden) layerStripPlayhead($("diff-strip", HTMLCanvasElement), stripImg);
}

/** The divergence point: a tick over the strips and the token marked on the token strip. */
function drawDivergence() {
  const el = $("pair-ticks");
  el.innerHTML = "";
  for (const s of $("tokens").querySelectorAll(".t.diverge")) s.classList.remove("diverge");
  const t = pairState.first;
  const g = stripGeometry();
  if (t === null || !g.n) { el.hidden = true; return; }
  el.hidden = false;
  const tick = document.createElement("span");
  tick.className = "mk mk-diverge";
  tick.id = "diverge-tick";
  tick.dataset.t = String(t);
  tick.setAttribute("aria-label", `the texts diverge at token ${t}`);
  tick.style.left = `${g.left + ((t + 0.5) / g.n) * g.W - 3}px`; // CSSOM (the CSP blocks style attributes)
  el.appendChild(tick);
  const span = $("tokens").children[t];
  if (span) span.classList.add("diverge");
}

/** The token and layer under the mouse on the strip, or null. @param {MouseEvent} e */
function stripAt(e) {
  if (!stripImg || !pairState.data) return null;
  const r = $("diff-strip").getBoundingClientRect();
  const u = (e.clientX - r.left - stripImg.left) / stripImg.W;
  const t = Math.floor(u * stripImg.n);
  const l = pairState.L - 1 - Math.floor((e.clientY - r.top) / stripImg.rowH);
  return u >= 0 && u <= 1 && t < pairState.n && l >= 0 && l < pairState.L ? { t, l } : null;
}

on("open", () => { load(); });
on("status", (cur) => { if (cur.summary.status !== "recording" && cur.summary.baseline) load(); });
on("seek", () => { if (pairState.data && stripSignal() !== pairState.signal) drawDiffStrip(); else drawPlayhead(); });
on("resize", () => drawDiffStrip());

/** @param {(t: number) => void} seek */
export function wirePairing(seek) {
  const c = $("diff-strip");
  c.addEventListener("mousedown", (e) => { const h = stripAt(e); if (h) seek(h.t); });
  c.addEventListener("mousemove", (e) => {
    const h = stripAt(e);
    const data = pairState.data;
    if (!h || !data) { hideTip(); return; }
    const si = Math.max(0, pairState.signals.indexOf(pairState.signal));
    const { n, L, signals } = pairState;
    const at = (/** @type {number} */ m) => data[((m * signals.length + si) * n + h.t) * L + h.l];
    const tok = view.tokens[h.t];
    showTip(`<span class="h">token ${h.t}</span> ${esc(oneLine(tok ? tok.text : ""))}<br>L${h.l} ${esc(pairState.signal)} vs baseline: ` +
      `rel L2 <b>${fmt(at(1), 3)}</b> · cosine ${fmt(at(0), 4)}`, e);
  });
  c.addEventListener("mouseleave", hideTip);
  $("pair-ticks").addEventListener("click", (e) => { const t = dataOf(e, "t"); if (t !== undefined) seek(Number(t)); });
  segment($("pair-metric"), pairState.metric, (v) => { pairState.metric = v; setSeg($("pair-metric"), v); drawDiffStrip(); });
  $("pair-sub").onclick = () => setDiff("session"); // the frames minus the baseline's (compare.js picks it)
}
