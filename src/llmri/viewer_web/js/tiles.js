// @ts-check
// The tiles: their layout, the frame drawn into them (plain or as a difference), the scales that colour them,
// the colour controls and the colour bar.
import { ApiError, getArray, sessionUrl } from "./api.js";
import { diffValue, finiteAbs } from "./overflow.js";
import { Renderer, drawColorbar } from "./render.js";
import { emit, on, view } from "./state.js";
import { drawSparklines } from "./timeline.js";
import { $, banner, segment, setSeg } from "./ui.js";

/** @typedef {import("./api.js").FrameSource} FrameSource */

/** @type {Record<string, string>} */
export const SIGNAL_TITLES = { resid: "residual stream", attn: "attention out", mlp: "MLP out" };

export const renderer = new Renderer($("view", HTMLCanvasElement), $("overlay", HTMLCanvasElement));
/** @type {Record<string, Float32Array>} signal -> the difference frame, reused between draws */
let scratch = {};

/** A new session is open: nothing of the last one's frames, stats or scales carries over. */
export function resetFrames() {
  view.stats = {};
  view.scales = {};
  view.globalScale = {};
  view.drawn = -1;
  scratch = {};
}

function shownSignals() {
  const sigs = view.cur ? view.cur.meta.signals || [] : [];
  if (view.mode === "all" || view.mode === "composite") return sigs;
  return sigs.includes(view.mode) ? [view.mode] : sigs.slice(0, 1);
}

/** @returns {import("./render.js").Grid[]} */
function grids() {
  const sigs = shownSignals();
  if (view.mode === "composite") return [{ name: "composite", title: "composite", signals: sigs }];
  return sigs.map((s) => ({ name: s, title: s, subtitle: SIGNAL_TITLES[s] || "", signals: [s] }));
}

/** The signal modes of the session shown, as buttons (all, each signal, composite). */
export function buildSignalModes() {
  const sigs = (view.cur && view.cur.meta.signals) || [];
  const el = $("signal-mode");
  el.innerHTML = "";
  const modes = sigs.length > 1 ? ["all", ...sigs, "composite"] : sigs.length ? [sigs[0]] : [];
  for (const m of modes) {
    const b = document.createElement("button");
    b.dataset.v = m;
    b.textContent = m;
    b.title = m === "composite" ? "one grid, hue = signal (resid blue, attn orange, mlp green)" : m === "all" ? "one grid per signal" : SIGNAL_TITLES[m] || m;
    el.appendChild(b);
  }
  if (!modes.includes(view.mode)) view.mode = modes[0] || "all";
  segment(el, view.mode, (v) => { view.mode = v; setSeg(el, v); layout(); drawSparklines(); updateColorbar(); redraw(); });
}

/** The colour maps the server gave (/api/colormaps: name -> flat [256*3]). */
/** @param {Record<string, number[]>} luts */
export function setColormaps(luts) {
  for (const [name, flat] of Object.entries(luts)) view.luts[name] = Uint8Array.from(flat);
}

// ---------------------------------------------------------------------------------------------
// frames drawn: promises for tests, benchmarks and the live chat

/** Resolves when frame t has been drawn. @param {number} t @returns {Promise<number>} */
export function whenDrawn(t) {
  return view.drawn === t ? Promise.resolve(t) : new Promise((resolve) => { view.waiters.push({ t, resolve }); });
}

/** Frame t is on the canvas now: say so once to whoever waits for it. @param {number} t */
function drawnNow(t) {
  view.drawn = t;
  view.drawCount++;
  const ready = view.waiters.filter((w) => w.t === t);
  view.waiters = view.waiters.filter((w) => w.t !== t);
  for (const w of ready) w.resolve(t);
  emit("drawn", t);
}

export function layout() {
  if (!view.cur || !(view.cur.meta.signals || []).length) return;
  const stage = $("stage");
  const [rows, cols] = view.cur.grid;
  const m = view.cur.meta;
  const [h, w] = m.tile || [0, 0];
  renderer.setLayout(grids(), rows, cols, (m.layers || []).length, h, w, stage.clientWidth - 30, stage.clientHeight - 30, m);
  view.drawn = -1;
  redraw();
}

// ---------------------------------------------------------------------------------------------
// stats and scales
export async function loadStats() {
  const cur = view.cur;
  if (!cur) return;
  const sigs = cur.meta.signals || [];
  const L = (cur.meta.layers || []).length;
  await Promise.all(
    sigs.map(async (s) => {
      try {
        const { header, data } = await getArray(`${sessionUrl(cur.summary)}/stats?signal=${s}`);
        const n = header.shape[1];
        const norm = data.subarray(0, n * L), sp = data.subarray(n * L, 2 * n * L);
        let lo = Infinity, hi = -Infinity;
        for (const v of sp) { if (v < lo) lo = v; if (v > hi) hi = v; }
        view.stats[s] = { norm, sp, n, spMin: lo, spMax: hi > lo ? hi : lo + 1 };
      } catch (e) {
        console.warn("stats", s, e);
      }
    }),
  );
  for (const s of sigs) {
    // Same rule as llmri.colormaps (and so the PNG exporter): a missing or non-positive scale counts as 1.
    const given = ((cur.meta.scales || {})[s] || []).map(Number);
    if (given.length === L) setScales(s, Float32Array.from(given, (x) => (x > 0 && Number.isFinite(x) ? x : 1)));
  }
}

/** @param {string} s @param {Float32Array} arr */
function setScales(s, arr) {
  view.scales[s] = arr;
  view.globalScale[s] = Float32Array.from(arr, () => Math.max(...arr));
}

/** Scales a session lacks (no calibration) are estimated from its first chunk: the 99th percentile of |v| per
 * layer, as llmri.render.fallback_scales does for one frame (a whole chunk keeps them steady while scrubbing).
 * @param {string} s @param {FrameSource} src */
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

/** The scales signal s is divided by under the current normalisation. @type {(s: string) => Float32Array | undefined} */
export const scalesOf = (s) => (view.norm === "global" ? view.globalScale[s] : view.scales[s]);

// ---------------------------------------------------------------------------------------------
// drawing
/** @returns {import("./render.js").ColourOpts} */
function opts() {
  const signed = view.cmap === "diverging";
  return {
    lut: view.luts[view.cmap],
    signed,
    window: view.window,
    level: view.level,
    sparsity: view.sparsity,
    grayscale: view.cmap === "grayscale",
  };
}

/** The (source, signal, frame) triples drawing frame t of `src` needs, the diff's other frame included.
 * @param {FrameSource} src @param {number} t */
function needed(src, t) {
  /** @type {[FrameSource, string, number][]} */
  const out = [];
  for (const s of shownSignals()) {
    out.push([src, s, t]);
    if (view.diff === "prev" && t > 0) out.push([src, s, t - 1]);
    if (view.diff === "session" && view.diffSrc && t < view.diffSrc.total) out.push([view.diffSrc, s, t]);
  }
  return out;
}

/** Frame t of signal s as drawn: the values, or under a diff mode this frame minus the other one.
 * @param {string} s @param {number} t */
export function frameValues(s, t) {
  const src = view.src;
  const a = src ? src.get(s, t) : null;
  if (!src || !a || view.diff === "off") return a;
  let b = null;
  if (view.diff === "prev") b = t > 0 ? src.get(s, t - 1) : null;
  else if (view.diffSrc) b = t < view.diffSrc.total ? view.diffSrc.get(s, t) : null;
  if (!b) return view.diff === "prev" ? new Float32Array(a.length) : null;
  const out = scratch[s] && scratch[s].length === a.length ? scratch[s] : (scratch[s] = new Float32Array(a.length));
  for (let i = 0; i < a.length; i++) out[i] = diffValue(a[i], b[i]);
  return out;
}

export function redraw() {
  view.drawn = -1;
  tryDraw();
}

function tryDraw() {
  if (!view.cur || !view.src || !renderer.layout || !(view.cur.meta.signals || []).length) return false;
  const t = view.t;
  if (t >= view.src.total) return false;
  const miss = needed(view.src, t).filter(([src, s, u]) => !src.has(s, u));
  if (miss.length) {
    fetchMissing(t, miss);
    return false;
  }
  $("loading").hidden = true;
  for (const s of shownSignals()) if (!view.scales[s]) estimateScales(s, view.src);
  const data = grids().map((grid) => {
    /** @type {import("./render.js").GridData} */
    const d = { values: {}, scales: {}, sat: saturation(grid.signals[0], t) };
    for (const s of grid.signals) {
      d.values[s] = frameValues(s, t);
      d.scales[s] = scalesOf(s) || new Float32Array(0);
    }
    return d;
  });
  const t0 = performance.now();
  renderer.draw(data, opts());
  view.lastDrawMs = performance.now() - t0;
  drawnNow(t);
  const dir = view.lastDir || 1;
  view.src.prefetch(shownSignals(), t, dir, view.playing ? 3 : 1);
  if (view.diffSrc) view.diffSrc.prefetch(shownSignals(), t, dir, 1);
  return true;
}

/** @param {number} t @param {[FrameSource, string, number][]} miss */
function fetchMissing(t, miss) {
  $("loading").hidden = false;
  // Draw as soon as the last missing chunk lands (not on the next animation frame: that adds up to 16 ms).
  /** @type {Map<string, [FrameSource, number, string[]]>} */
  const groups = new Map(); // one request per (source, frame): every missing signal at once
  for (const [src, s, u] of miss) {
    const k = `${src.url}|${u}`;
    const group = groups.get(k) || /** @type {[FrameSource, number, string[]]} */ ([src, u, []]);
    groups.set(k, group);
    group[2].push(s);
  }
  for (const [src, u, sigs] of groups.values()) {
    src.ensureMany(sigs, u).then(() => { if (view.t === t && view.drawn !== t) tryDraw(); }, fetchFailed);
  }
}

/** Per-layer saturation for "saturation = sparsity" (null when off or without stats for frame t).
 * @param {string} s @param {number} t */
function saturation(s, t) {
  const st = view.stats[s];
  if (!view.sparsity || !st || t >= st.n || !view.cur) return null;
  const L = (view.cur.meta.layers || []).length;
  const sat = new Float32Array(L);
  for (let l = 0; l < L; l++) sat[l] = (st.sp[t * L + l] - st.spMin) / (st.spMax - st.spMin);
  return sat;
}

/** @param {unknown} e */
export function fetchFailed(e) {
  if (e instanceof Error && e.name === "AbortError") return;
  banner(`could not load frames: ${e instanceof ApiError ? e.message : e}`, "error");
}

on("seek", (t) => {
  if (view.drawn !== t) tryDraw();
  if (view.cur && !(view.cur.meta.signals || []).length) {
    view.drawn = t; // a chat-only session has nothing to draw: the token panel is the whole frame
    for (const w of view.waiters.splice(0)) w.resolve(w.t);
  }
});

// ---------------------------------------------------------------------------------------------
// colour controls and the colour bar
/** @param {string} name */
export function setCmap(name) {
  if (!view.luts[name]) return;
  view.cmap = name;
  setSeg($("cmap"), name);
  updateColorbar();
  redraw();
}

export function updateColorbar() {
  const o = opts();
  const composite = view.mode === "composite";
  $("cmap").classList.toggle("inert", composite); // the composite colours by signal, not by a colour map
  $("cmap").title = composite ? "the composite view colours each signal by its own hue" : "";
  const unitLabel = view.norm === "global" ? "absolute value (global scale)" : "× each layer's scale";
  let label = `${view.diff !== "off" ? "Δ " : ""}${o.signed ? "signed value" : "|value|"}, ${unitLabel}`;
  if (composite) label = `|value| per channel, ${unitLabel}`;
  let unit = 1;
  if (view.norm === "global") {
    const s = shownSignals()[0];
    unit = view.globalScale[s] ? view.globalScale[s][0] : 1;
  }
  drawColorbar($("colorbar", HTMLCanvasElement), o.lut, o, label, composite, unit);
  $("window-out").textContent = view.window.toFixed(2);
  $("level-out").textContent = view.level.toFixed(2);
}

export async function savePng() {
  if (!view.cur || !renderer.layout || !(view.cur.meta.signals || []).length) return;
  const blob = await renderer.snapshot();
  if (!blob) return;
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  const diff = view.diff === "off" ? "" : view.diff === "prev" ? "-dprev" : "-dsession";
  a.download = `llmri-${view.cur.summary.id}-t${view.t}-${view.mode}-${view.cmap}${diff}.png`;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 5000);
}

export function wireTiles() {
  segment($("cmap"), view.cmap, setCmap);
  segment($("norm"), view.norm, (v) => { view.norm = v; setSeg($("norm"), v); updateColorbar(); redraw(); });
  const win = $("window", HTMLInputElement), level = $("level", HTMLInputElement), sparsity = $("sparsity", HTMLInputElement);
  win.addEventListener("input", () => { view.window = Number(win.value); updateColorbar(); redraw(); });
  level.addEventListener("input", () => { view.level = Number(level.value); updateColorbar(); redraw(); });
  sparsity.onchange = () => { view.sparsity = sparsity.checked; redraw(); };
  $("reset-wl").onclick = () => {
    view.window = 1; view.level = 0.5;
    win.value = "1"; level.value = "0.5";
    updateColorbar(); redraw();
  };
  $("save-png").onclick = savePng;
}
