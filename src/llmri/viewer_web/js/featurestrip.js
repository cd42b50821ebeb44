// @ts-check
// The feature strip: each pinned SAE feature's activation over every token of the session (GET
// /features/{sae}/strip, SAEFeatures.activation: 0 where the feature is not among a token's stored top-k), one
// row per feature, under the lens strip and on the norm strip's time axis; each row scaled by its own maximum.
import { getArray, sessionUrl } from "./api.js";
import { view, on } from "./state.js";
import { stripGeometry } from "./timeline.js";
import { hideTip, showTip } from "./inspector.js";
import { drawStripPlayhead } from "./lens.js";
import { context2d } from "./render.js";
import { $, esc, fmt, oneLine } from "./ui.js";

const ROW_H = 12; // css px per feature

/** What the strip shows (window.llmri.features.strip, for tests). */
export const stripState = {
  /** @type {string | null} */ sae: null,
  /** @type {number[]} */ features: [],
  /** @type {string[]} */ labels: [],
  /** @type {number[]} */ max: [],
  n: 0,
  /** @type {Float32Array} */ data: new Float32Array(0), // [features * n]
  /** @type {string | null} */ key: null, // the session
};
/** @type {{img: ImageData, n: number, W: number, left: number, dpr: number, cssH: number} | null} */
let img = null;
/** @type {{sae: string | null, features: number[]}} the last ask, for a growing session and a resize */
let asked = { sae: null, features: [] };

let seq = 0;
/** Fetch and draw the strip of `features` of SAE `sae` (none: the strip hides). @param {string | null} [sae] @param {number[]} [features] */
export async function loadStrip(sae = asked.sae, features = asked.features) {
  asked = { sae, features: [...features] };
  const c = $("feat-strip", HTMLCanvasElement);
  const mine = ++seq;
  if (!view.cur || !sae || !features.length) {
    stripState.features = []; stripState.n = 0; stripState.data = new Float32Array(0); img = null;
    c.hidden = true;
    return;
  }
  const key = view.cur.summary.key;
  const q = features.map((f) => `feature=${f}`).join("&");
  const got = await getArray(`${sessionUrl(view.cur.summary)}/features/${encodeURIComponent(sae)}/strip?${q}`).catch(() => null);
  if (mine !== seq || !view.cur || view.cur.summary.key !== key) return;
  if (!got) { c.hidden = true; return; }
  const h = /** @type {any} */ (got.header);
  Object.assign(stripState, { sae, key, features: h.features, labels: h.labels, max: h.max, n: h.shape[1], data: got.data });
  c.hidden = false;
  drawStrip();
}

export function drawStrip() {
  const c = $("feat-strip", HTMLCanvasElement);
  const F = stripState.features.length;
  if (!F || c.hidden) return;
  const g = stripGeometry();
  const dpr = window.devicePixelRatio || 1;
  const cssW = c.clientWidth || 800;
  const cssH = F * ROW_H;
  c.style.height = `${cssH}px`;
  c.width = Math.round(cssW * dpr);
  c.height = Math.round(cssH * dpr);
  const ctx = context2d(c);
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, cssW, cssH);
  const lut = view.luts.energy || view.luts.grayscale;
  const n = Math.max(g.n, stripState.n), W = g.W;
  ctx.font = "9px ui-monospace, Menlo, monospace";
  ctx.textBaseline = "middle";
  for (let r = 0; r < F; r++) {
    const top = stripState.max[r] > 0 ? stripState.max[r] : 1;
    const row = stripState.data.subarray(r * stripState.n, (r + 1) * stripState.n);
    ctx.fillStyle = "#7d8a9b";
    ctx.fillText(`#${stripState.features[r]}`, 0, r * ROW_H + ROW_H / 2, g.left - 2);
    for (let x = 0; x < W && n; x++) {
      const a = Math.floor((x / W) * n), b = Math.max(a + 1, Math.floor(((x + 1) / W) * n));
      let v = 0;
      for (let t = a; t < b && t < stripState.n; t++) v = Math.max(v, row[t]);
      if (!(v > 0)) continue;
      const i = Math.max(0, Math.min(255, Math.round((v / top) * 255)));
      ctx.fillStyle = `rgb(${lut[3 * i]},${lut[3 * i + 1]},${lut[3 * i + 2]})`;
      ctx.fillRect(g.left + x, r * ROW_H + 1, 1, ROW_H - 2);
    }
  }
  img = { img: ctx.getImageData(0, 0, c.width, c.height), n, W, left: g.left, dpr, cssH };
  drawPlayhead();
}

const drawPlayhead = () => drawStripPlayhead($("feat-strip", HTMLCanvasElement), img);

/** The token and feature row under the mouse, or null. @param {MouseEvent} e */
function at(e) {
  if (!img) return null;
  const r = $("feat-strip").getBoundingClientRect();
  const u = (e.clientX - r.left - img.left) / img.W;
  const t = Math.floor(u * img.n);
  const row = Math.floor((e.clientY - r.top) / ROW_H);
  return u >= 0 && u <= 1 && t < stripState.n && row >= 0 && row < stripState.features.length ? { t, row } : null;
}

/** @param {(t: number) => void} seek */
export function wireStrip(seek) {
  const c = $("feat-strip");
  c.addEventListener("mousedown", (e) => { const h = at(e); if (h) seek(h.t); });
  c.addEventListener("mousemove", (e) => {
    const h = at(e);
    if (!h) { hideTip(); return; }
    const tok = view.tokens[h.t], f = stripState.features[h.row], label = stripState.labels[h.row];
    const v = stripState.data[h.row * stripState.n + h.t];
    showTip(`<span class="h">token ${h.t}</span> ${esc(oneLine(tok ? tok.text : ""))}<br>feature #${f}${label ? ` ${esc(oneLine(label))}` : ""} <b>${fmt(v, 3)}</b>` +
      `<br><span class="dim">its largest in this session ${fmt(stripState.max[h.row], 3)}; 0: not among the token's stored top features</span>`, e);
  });
  c.addEventListener("mouseleave", hideTip);
}

let timer = 0;
// a growing session (a recording, the live chat): again at most every 1.5 s while frames stream in
on("grow", () => { if (!timer && asked.features.length) timer = setTimeout(() => { timer = 0; loadStrip(); }, 1500); });
on("resize", () => drawStrip());
on("seek", () => drawPlayhead());
