// The tiles: their layout, the frame drawn into them (plain or as a difference), the scales that colour them,
// the colour controls and the colour bar.
import { ApiError, getArray, sessionUrl } from "./api.js";
import { diffValue, finiteAbs } from "./overflow.js";
import { Renderer, drawColorbar } from "./render.js";
import { S, drawnNow, on } from "./state.js";
import { $, banner, segment, setSeg } from "./ui.js";

export const SIGNAL_TITLES = { resid: "residual stream", attn: "attention out", mlp: "MLP out" };

export const renderer = new Renderer($("view"), $("overlay"));
let scratch = {}; // signal -> Float32Array: the difference frame, reused between draws

/** A new session is open: nothing of the last one's frames, stats or scales carries over. */
export function resetFrames() {
  S.stats = {};
  S.scales = {};
  S.globalScale = {};
  S.drawn = -1;
  scratch = {};
}

function shownSignals() {
  const sigs = S.cur ? S.cur.meta.signals || [] : [];
  if (S.mode === "all" || S.mode === "composite") return sigs;
  return sigs.includes(S.mode) ? [S.mode] : sigs.slice(0, 1);
}

function grids() {
  const sigs = shownSignals();
  if (S.mode === "composite") return [{ name: "composite", title: "composite", signals: sigs }];
  return sigs.map((s) => ({ name: s, title: s, subtitle: SIGNAL_TITLES[s] || "", signals: [s] }));
}

export function layout() {
  if (!S.cur || !(S.cur.meta.signals || []).length) return;
  const stage = $("stage");
  const [rows, cols] = S.cur.grid;
  const m = S.cur.meta;
  renderer.setLayout(grids(), rows, cols, m.layers.length, m.tile[0], m.tile[1], stage.clientWidth - 30, stage.clientHeight - 30, m);
  S.drawn = -1;
  redraw();
}

// ---------------------------------------------------------------------------------------------
// stats and scales
export async function loadStats() {
  const sigs = S.cur.meta.signals || [];
  const L = (S.cur.meta.layers || []).length;
  await Promise.all(
    sigs.map(async (s) => {
      try {
        const { header, data } = await getArray(`${sessionUrl(S.cur.summary)}/stats?signal=${s}`);
        const n = header.shape[1];
        const norm = data.subarray(0, n * L), sp = data.subarray(n * L, 2 * n * L);
        let lo = Infinity, hi = -Infinity;
        for (const v of sp) { if (v < lo) lo = v; if (v > hi) hi = v; }
        S.stats[s] = { norm, sp, n, spMin: lo, spMax: hi > lo ? hi : lo + 1 };
      } catch (e) {
        console.warn("stats", s, e);
      }
    }),
  );
  for (const s of sigs) {
    // Same rule as llmri.colormaps (and so the PNG exporter): a missing or non-positive scale counts as 1.
    const given = ((S.cur.meta.scales || {})[s] || []).map(Number);
    if (given.length === L) setScales(s, Float32Array.from(given, (x) => (x > 0 && Number.isFinite(x) ? x : 1)));
  }
}

function setScales(s, arr) {
  S.scales[s] = arr;
  S.globalScale[s] = Float32Array.from(arr, () => Math.max(...arr));
}

/** Scales a session lacks (no calibration) are estimated from its first chunk: the 99th percentile of |v| per
 * layer, as llmri.render.fallback_scales does for one frame (a whole chunk keeps them steady while scrubbing). */
function estimateScales(s, src) {
  const L = src.layers, per = src.h * src.w;
  const out = new Float32Array(L);
  for (let l = 0; l < L; l++) {
    const vals = [];
    for (let t = 0; t < Math.min(src.total, src.chunk); t++) {
      const f = src.get(s, t);
      if (!f) continue;
      for (let i = 0; i < per; i++) { const a = finiteAbs(f[l * per + i]); if (a !== null) vals.push(a); }
    }
    vals.sort((a, b) => a - b);
    out[l] = vals.length ? vals[Math.floor(0.99 * (vals.length - 1))] || 1 : 1;
  }
  setScales(s, out);
}

/** The scales signal s is divided by under the current normalisation. */
export const scalesOf = (s) => (S.norm === "global" ? S.globalScale[s] : S.scales[s]);

// ---------------------------------------------------------------------------------------------
// drawing
function opts() {
  const signed = S.cmap === "diverging";
  return {
    lut: S.luts[S.cmap],
    signed,
    window: S.window,
    level: S.level,
    sparsity: S.sparsity,
    grayscale: S.cmap === "grayscale",
  };
}

/** The (source, signal, frame) triples drawing frame t needs, the diff's other frame included. */
function needed(t) {
  const out = [];
  for (const s of shownSignals()) {
    out.push([S.src, s, t]);
    if (S.diff === "prev" && t > 0) out.push([S.src, s, t - 1]);
    if (S.diff === "session" && S.diffSrc && t < S.diffSrc.total) out.push([S.diffSrc, s, t]);
  }
  return out;
}

/** Frame t of signal s as drawn: the values, or under a diff mode this frame minus the other one. */
export function frameValues(s, t) {
  const a = S.src.get(s, t);
  if (!a || S.diff === "off") return a;
  let b = null;
  if (S.diff === "prev") b = t > 0 ? S.src.get(s, t - 1) : null;
  else if (S.diffSrc) b = t < S.diffSrc.total ? S.diffSrc.get(s, t) : null;
  if (!b) return S.diff === "prev" ? new Float32Array(a.length) : null;
  const out = scratch[s] && scratch[s].length === a.length ? scratch[s] : (scratch[s] = new Float32Array(a.length));
  for (let i = 0; i < a.length; i++) out[i] = diffValue(a[i], b[i]);
  return out;
}

export function redraw() {
  S.drawn = -1;
  tryDraw();
}

function tryDraw() {
  if (!S.cur || !S.src || !renderer.layout || !(S.cur.meta.signals || []).length) return false;
  const t = S.t;
  if (t >= S.src.total) return false;
  const miss = needed(t).filter(([src, s, u]) => !src.has(s, u));
  if (miss.length) {
    fetchMissing(t, miss);
    return false;
  }
  $("loading").hidden = true;
  for (const s of shownSignals()) if (!S.scales[s]) estimateScales(s, S.src);
  const data = grids().map((grid) => {
    const values = {}, scales = {};
    for (const s of grid.signals) {
      values[s] = frameValues(s, t);
      scales[s] = scalesOf(s);
    }
    return { values, scales, sat: saturation(grid.signals[0], t) };
  });
  const t0 = performance.now();
  renderer.draw(data, opts());
  S.lastDrawMs = performance.now() - t0;
  drawnNow(t);
  const dir = S.lastDir || 1;
  S.src.prefetch(shownSignals(), t, dir, S.playing ? 3 : 1);
  if (S.diffSrc) S.diffSrc.prefetch(shownSignals(), t, dir, 1);
  return true;
}

function fetchMissing(t, miss) {
  $("loading").hidden = false;
  // Draw as soon as the last missing chunk lands (not on the next animation frame: that adds up to 16 ms).
  const groups = new Map(); // one request per (source, frame): every missing signal at once
  for (const [src, s, u] of miss) {
    const k = `${src.url}|${u}`;
    if (!groups.has(k)) groups.set(k, [src, u, []]);
    groups.get(k)[2].push(s);
  }
  for (const [src, u, sigs] of groups.values()) {
    src.ensureMany(sigs, u).then(() => { if (S.t === t && S.drawn !== t) tryDraw(); }, fetchFailed);
  }
}

/** Per-layer saturation for "saturation = sparsity" (null when off or without stats for frame t). */
function saturation(s, t) {
  const st = S.stats[s];
  if (!S.sparsity || !st || t >= st.n) return null;
  const L = S.cur.meta.layers.length;
  const sat = new Float32Array(L);
  for (let l = 0; l < L; l++) sat[l] = (st.sp[t * L + l] - st.spMin) / (st.spMax - st.spMin);
  return sat;
}

export function fetchFailed(e) {
  if (e && e.name === "AbortError") return;
  banner(`could not load frames: ${e instanceof ApiError ? e.message : e}`, "error");
}

on("seek", (t) => {
  if (S.drawn !== t) tryDraw();
  if (!(S.cur.meta.signals || []).length) {
    S.drawn = t; // a chat-only session has nothing to draw: the token panel is the whole frame
    for (const w of S.waiters.splice(0)) w.resolve(w.t);
  }
});

// ---------------------------------------------------------------------------------------------
// colour controls and the colour bar
export function setCmap(name) {
  if (!S.luts[name]) return;
  S.cmap = name;
  setSeg($("cmap"), name);
  updateColorbar();
  redraw();
}

export function updateColorbar() {
  const o = opts();
  const composite = S.mode === "composite";
  $("cmap").classList.toggle("inert", composite); // the composite colours by signal, not by a colour map
  $("cmap").title = composite ? "the composite view colours each signal by its own hue" : "";
  const unitLabel = S.norm === "global" ? "absolute value (global scale)" : "× each layer's scale";
  let label = `${S.diff !== "off" ? "Δ " : ""}${o.signed ? "signed value" : "|value|"}, ${unitLabel}`;
  if (composite) label = `|value| per channel, ${unitLabel}`;
  let unit = 1;
  if (S.norm === "global") {
    const s = shownSignals()[0];
    unit = S.globalScale[s] ? S.globalScale[s][0] : 1;
  }
  drawColorbar($("colorbar"), o.lut, o, label, composite, unit);
  $("window-out").textContent = S.window.toFixed(2);
  $("level-out").textContent = S.level.toFixed(2);
}

export async function savePng() {
  if (!S.cur || !renderer.layout || !(S.cur.meta.signals || []).length) return;
  const blob = await renderer.snapshot();
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  const diff = S.diff === "off" ? "" : S.diff === "prev" ? "-dprev" : "-dsession";
  a.download = `llmri-${S.cur.summary.id}-t${S.t}-${S.mode}-${S.cmap}${diff}.png`;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 5000);
}

export function wireTiles() {
  segment($("cmap"), S.cmap, setCmap);
  segment($("norm"), S.norm, (v) => { S.norm = v; setSeg($("norm"), v); updateColorbar(); redraw(); });
  $("window").addEventListener("input", (e) => { S.window = Number(e.target.value); updateColorbar(); redraw(); });
  $("level").addEventListener("input", (e) => { S.level = Number(e.target.value); updateColorbar(); redraw(); });
  $("sparsity").onchange = (e) => { S.sparsity = e.target.checked; redraw(); };
  $("reset-wl").onclick = () => {
    S.window = 1; S.level = 0.5;
    $("window").value = "1"; $("level").value = "0.5";
    updateColorbar(); redraw();
  };
  $("save-png").onclick = savePng;
}
