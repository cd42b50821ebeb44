// @ts-check
// The probe strip (docs/interventions.md, "Watching a direction: probes"): under the norm strip and on its time
// axis, one row per direction probe the session holds, each token coloured by its projection on the direction at
// the chosen layer (diverging, white at 0; the row's 95th percentile of |projection| at full colour). Its canvas
// and layer picker are made here, after #sparklines, so the page needs no markup of its own; hidden for a session
// without probes.
import { getArray, sessionUrl } from "./api.js";
import { hideTip, showTip } from "./inspector.js";
import { context2d } from "./render.js";
import { on, view } from "./state.js";
import { stripGeometry } from "./timeline.js";
import { $, esc, fmt, oneLine } from "./ui.js";

/** @typedef {{names: string[], P: number, n: number, L: number, data: Float32Array}} Strip */

const ROW_H = 12;
/** What the strip shows (also window.llmri.probes, for tests): the probes, the chosen layer, the strip's arrays.
 * @type {{names: string[], layer: number, layers: number[], strip: Strip | null, drawn: number}} */
export const probeState = { names: [], layer: -1, layers: [], strip: null, drawn: 0 };
/** @type {{img: ImageData, n: number, W: number, left: number, dpr: number, cssH: number} | null} */
let stripImg = null;

/** The strip's elements, made once: a bar with the layer picker, and the canvas. */
function elements() {
  let wrap = document.getElementById("probe-wrap");
  if (!wrap) {
    wrap = document.createElement("div");
    wrap.id = "probe-wrap";
    wrap.hidden = true;
    wrap.innerHTML = `<div class="dim">probes · projection at ` +
      `<select id="probe-layer" title="the layer whose projection the strip shows" aria-label="probe layer"></select></div>` +
      `<canvas id="probe-strip"></canvas>`;
    $("sparklines").after(wrap);
    // styled through the CSSOM: the page's CSP (style-src 'self') refuses style attributes
    const bar = /** @type {HTMLElement} */ (wrap.firstElementChild);
    Object.assign(bar.style, { font: "10px ui-monospace, Menlo, monospace", marginTop: "3px" });
    Object.assign($("probe-strip").style, { width: "100%", display: "block", cursor: "pointer" });
  }
  return { wrap, select: $("probe-layer", HTMLSelectElement), canvas: $("probe-strip", HTMLCanvasElement) };
}

/** The probes of the session shown (its meta), [] for none. @returns {string[]} */
function probeNames() {
  const meta = /** @type {{probes?: {name: string}[]}} */ (/** @type {unknown} */ (view.cur ? view.cur.meta : {}));
  return (meta.probes || []).map((p) => String(p.name));
}

/** @param {Strip} s @param {number} p @param {number} t @param {number} l @param {number} [field] 0 projection, 1 cosine */
export const probeValue = (s, p, t, l, field = 0) => s.data[((field * s.P + p) * s.n + t) * s.L + l];

export async function loadProbeStrip() {
  const { wrap, select } = elements();
  const names = probeNames();
  if (!view.cur || !names.length) { wrap.hidden = true; probeState.strip = null; probeState.names = []; return; }
  const key = view.cur.summary.key;
  const { header, data } = await getArray(`${sessionUrl(view.cur.summary)}/probestrip`);
  if (!view.cur || view.cur.summary.key !== key) return;
  const [, P, n, L] = header.shape;
  const named = /** @type {{names?: string[]}} */ (/** @type {unknown} */ (header)).names;
  const strip = { names: named || names, P, n, L, data };
  // the layers some probe has a value at; the chosen one kept across reloads, else the first probe's middle one
  /** @type {number[]} */
  const layers = [];
  for (let l = 0; l < L; l++) {
    let any = false;
    for (let p = 0; p < P && !any; p++) for (let t = 0; t < n && !any; t++) any = probeValue(strip, p, t, l) === probeValue(strip, p, t, l);
    if (any) layers.push(l);
  }
  if (!layers.includes(probeState.layer) || probeState.names.join() !== strip.names.join()) {
    const first = layers.filter((l) => { for (let t = 0; t < n; t++) if (probeValue(strip, 0, t, l) === probeValue(strip, 0, t, l)) return true; return false; });
    probeState.layer = first.length ? first[Math.floor(first.length / 2)] : layers.length ? layers[0] : -1;
  }
  Object.assign(probeState, { names: strip.names, layers, strip });
  const names0 = view.cur.meta.layers || [];
  select.innerHTML = layers.map((l) => `<option value="${l}">L${l} ${esc(names0[l] || "")}</option>`).join("");
  select.value = String(probeState.layer);
  wrap.hidden = false;
  drawProbeStrip();
}

/** A row's colour scale: the 95th percentile of |projection| over the tokens after the first (position 0, the
 * attention sink, is many times the others on most models), at full colour; larger values are clipped.
 * @param {Strip} s @param {number} p @param {number} l */
export function rowScale(s, p, l) {
  /** @type {number[]} */
  const abs = [];
  for (let t = s.n > 1 ? 1 : 0; t < s.n; t++) { const v = probeValue(s, p, t, l); if (v === v) abs.push(Math.abs(v)); }
  abs.sort((a, b) => a - b);
  return abs.length ? abs[Math.floor(0.95 * (abs.length - 1))] : 0;
}

export function drawProbeStrip() {
  const { wrap, canvas: c } = elements();
  const s = probeState.strip;
  if (!s || wrap.hidden) return;
  const g = stripGeometry();
  const dpr = window.devicePixelRatio || 1;
  const cssW = c.clientWidth || 800;
  const cssH = s.P * ROW_H + 2;
  c.style.height = `${cssH}px`;
  c.width = Math.round(cssW * dpr);
  c.height = Math.round(cssH * dpr);
  const ctx = context2d(c);
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, cssW, cssH);
  const lut = view.luts.diverging || view.luts.grayscale;
  const n = Math.max(g.n, s.n), W = g.W, l = probeState.layer;
  ctx.font = "10px ui-monospace, Menlo, monospace";
  ctx.textBaseline = "middle";
  for (let p = 0; p < s.P; p++) {
    ctx.fillStyle = "#7d8a9b";
    ctx.fillText(s.names[p].slice(0, 5), 0, p * ROW_H + ROW_H / 2);
    const most = rowScale(s, p, l);
    for (let t = 0; t < s.n && n; t++) {
      const v = probeValue(s, p, t, l);
      if (!(v === v)) continue;
      const i = Math.max(0, Math.min(255, Math.round(((most > 0 ? v / most : 0) + 1) * 127.5)));
      ctx.fillStyle = `rgb(${lut[3 * i]},${lut[3 * i + 1]},${lut[3 * i + 2]})`;
      const x0 = Math.floor(g.left + (t / n) * W), x1 = Math.floor(g.left + ((t + 1) / n) * W);
      ctx.fillRect(x0, p * ROW_H + 1, Math.max(1, x1 - x0), ROW_H - 2);
    }
  }
  stripImg = { img: ctx.getImageData(0, 0, c.width, c.height), n, W, left: g.left, dpr, cssH };
  probeState.drawn++;
  drawPlayhead();
}

function drawPlayhead() {
  if (!stripImg) return;
  const ctx = context2d(elements().canvas);
  ctx.putImageData(stripImg.img, 0, 0);
  const { left, W, n, dpr, cssH } = stripImg;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = "#4fc3f7";
  ctx.fillRect(Math.round(left + ((view.t + 0.5) / n) * W) - 1, 0, 2, cssH);
}

/** The token and probe under the mouse, or null. @param {MouseEvent} e */
function stripAt(e) {
  const s = probeState.strip;
  if (!stripImg || !s) return null;
  const r = elements().canvas.getBoundingClientRect();
  const u = (e.clientX - r.left - stripImg.left) / stripImg.W;
  const t = Math.floor(u * stripImg.n), p = Math.floor((e.clientY - r.top) / ROW_H);
  return u >= 0 && u <= 1 && t < s.n && p >= 0 && p < s.P ? { t, p } : null;
}

let reloadTimer = 0;
/** @param {(t: number) => void} seek */
export function wireProbes(seek) {
  const { select, canvas } = elements();
  select.onchange = () => { probeState.layer = Number(select.value); drawProbeStrip(); };
  canvas.addEventListener("mousedown", (e) => { const h = stripAt(e); if (h) seek(h.t); });
  canvas.addEventListener("mousemove", (e) => {
    const h = stripAt(e), s = probeState.strip;
    if (!h || !s) { hideTip(); return; }
    const tok = view.tokens[h.t], l = probeState.layer;
    const proj = probeValue(s, h.p, h.t, l), cos = probeValue(s, h.p, h.t, l, 1);
    showTip(`<span class="h">${esc(s.names[h.p])} · L${l}</span> token ${h.t} ${esc(oneLine(tok ? tok.text : ""))}` +
      `<br>projection <b>${fmt(proj === proj ? proj : null, 3)}</b> · cosine ${fmt(cos === cos ? cos : null, 3)}`, e);
  });
  canvas.addEventListener("mouseleave", hideTip);
  on("open", () => { loadProbeStrip().catch(() => { elements().wrap.hidden = true; }); });
  // a growing session (a recording, the live chat): again at most every 1.5 s while frames stream in
  on("grow", () => { if (!reloadTimer) reloadTimer = setTimeout(() => { reloadTimer = 0; loadProbeStrip().catch(() => {}); }, 1500); });
  on("resize", () => drawProbeStrip());
  on("seek", () => drawPlayhead());
  window.llmri.probes = probeState;
}
