// @ts-check
// What the mouse and the playhead point at: the hovered pixel's values (Readout panel and tooltip) and the
// current token's probabilities (Token panel).
import { valueText } from "./overflow.js";
import { on, view } from "./state.js";
import { frameValues, renderer, scalesOf } from "./tiles.js";
import { $, esc, fmt, oneLine } from "./ui.js";

/** @typedef {import("./state.js").Meta} Meta */
/** @typedef {import("./state.js").Hover} Hover */
/** @typedef {import("./api.js").FrameSource} FrameSource */

/** @param {Meta} meta */
const isNeurons = (meta) => (meta.reducer || {}).kind === "neurons";

// ---------------------------------------------------------------------------------------------
// the tooltip
/** @param {string} html @param {MouseEvent} ev */
export function showTip(html, ev) {
  const tip = $("tooltip");
  tip.innerHTML = html;
  setBars(tip);
  tip.hidden = false;
  placeTip(ev);
}

export function hideTip() {
  $("tooltip").hidden = true;
}

/** @param {MouseEvent} ev */
function placeTip(ev) {
  const tip = $("tooltip");
  const x = Math.min(ev.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
  const y = Math.min(ev.clientY + 14, window.innerHeight - tip.offsetHeight - 8);
  tip.style.left = `${x}px`;
  tip.style.top = `${y}px`;
}

/** Inline styles are blocked by the page's CSP, so bar widths are set through the CSSOM.
 * @param {HTMLElement} el */
function setBars(el) {
  for (const b of el.querySelectorAll(".bar[data-w]")) if (b instanceof HTMLElement) b.style.width = `${b.dataset.w}%`;
}

// ---------------------------------------------------------------------------------------------
// the token
/** A token's record as HTML: its text, logprob, entropy and top alternatives. @param {import("./state.js").Token | undefined} t */
export function tokenHTML(t) {
  if (!t) return "";
  const p = t.logprob === null ? null : Math.exp(t.logprob);
  let html = `<div><span class="tok">${esc(oneLine(t.text))}</span> <span class="dim">#${t.index} · ${t.role} · id ${t.id}</span></div>`;
  html += `<div class="kv gap">`;
  html += `<span>logprob</span><span>${t.logprob === null ? "– (first token)" : `${fmt(t.logprob)}  (p ${fmt(p)})`}</span>`;
  html += `<span>entropy</span><span>${t.entropy === null ? "–" : `${fmt(t.entropy)} nats`}</span></div>`;
  if (t.top && t.top.length) {
    html += `<div class="alts">`;
    for (const a of t.top.slice(0, 5)) {
      const chosen = a.id === t.id ? " chosen" : "";
      html += `<div class="alt${chosen}"><div class="bar" data-w="${Math.round(a.prob * 100)}"></div><span>${esc(oneLine(a.text))}</span></div>`;
      html += `<div class="alt-p">${(a.prob * 100).toFixed(1)}%</div>`;
    }
    html += `</div>`;
  }
  return html;
}

on("seek", (t) => {
  $("token-info").innerHTML = tokenHTML(view.tokens[t]);
  setBars($("token-info"));
});

// ---------------------------------------------------------------------------------------------
// the hovered pixel
function updateReadout() {
  const h = view.hover;
  const el = $("readout");
  if (!h || !view.cur || !view.src || !renderer.layout) {
    el.innerHTML = `<span class="dim">hover a pixel</span>`;
    hideTip();
    return;
  }
  const L = renderer.layout;
  const grid = L.grids[h.grid];
  const meta = view.cur.meta, src = view.src;
  const layers = meta.layers || [];
  const idx = h.y * L.w + h.x; // a tile is the session's meta.tile, H x W
  const per = L.h * L.w;
  const pixelName = pixelNameOf(meta, idx);
  let rows = "";
  let headline = "";
  for (const s of grid.signals) {
    const a = src.get(s, view.t);
    const val = a ? a[h.layer * per + idx] : NaN;
    const sc = (scalesOf(s) || [1])[h.layer] || 1;
    let line = valueText(val, fmt);
    if (view.diff !== "off") {
      const d = frameValues(s, view.t);
      const dv = d ? d[h.layer * per + idx] : NaN;
      line = `Δ ${valueText(dv, fmt)}  (this ${valueText(val, fmt)})`;
      if (!headline) headline = valueText(dv, fmt);
    } else if (!headline) headline = valueText(val, fmt);
    rows += `<span>${esc(s)}</span><span>${line}</span>`;
    rows += `<span>÷ scale</span><span>${fmt(val / sc, 3)} <span class="dim">(scale ${fmt(sc, 2)})</span></span>`;
    const st = view.stats[s];
    if (st && view.t < st.n) {
      const Ls = layers.length;
      rows += `<span>layer ‖x‖</span><span>${fmt(st.norm[view.t * Ls + h.layer], 1)}</span>`;
      rows += `<span>sparsity</span><span>${fmt(st.sp[view.t * Ls + h.layer], 3)}</span>`;
    }
  }
  el.innerHTML =
    `<div class="big">${headline}</div>` +
    `<div class="kv"><span>layer</span><span>${h.layer} <span class="dim">${esc(layers[h.layer] || "")}</span></span>` +
    `<span>signal</span><span>${esc(grid.signals.join(" + "))}</span>` +
    `<span>${isNeurons(meta) ? "neuron" : "pixel"}</span><span>${pixelName.replace(/^(neuron|pixel) /, "")} <span class="dim">(row ${h.y}, col ${h.x})</span></span>` +
    rows +
    `</div>`;
  const tip = $("tooltip");
  tip.innerHTML =
    `<span class="h">${esc(grid.signals.join("+"))} · L${h.layer} · ${pixelName}</span> <span class="dim">(r${h.y}, c${h.x})</span>` +
    `<br>${view.diff !== "off" ? "Δ " : ""}value <b>${headline}</b>${tipExtra(src, layers.length, grid.signals, h, idx, per)}`;
  tip.hidden = false;
}

/** Pixel idx by what it is: a neuron under the neurons reducer (or the padding after the last one).
 * @param {Meta} meta @param {number} idx */
function pixelNameOf(meta, idx) {
  const red = meta.reducer || {};
  const nValues = red.n_values || (isNeurons(meta) ? meta.model && meta.model.d_model : null);
  if (!isNeurons(meta)) return `pixel ${idx}`;
  return nValues && idx >= nValues ? `pixel ${idx} (padding)` : `neuron ${idx}`;
}

/** The tooltip's second line for a one-signal grid: the scaled value and the layer's norm and sparsity.
 * @param {FrameSource} src @param {number} Ls the layers @param {string[]} signals the grid's @param {Hover} h
 * @param {number} idx @param {number} per */
function tipExtra(src, Ls, signals, h, idx, per) {
  if (signals.length !== 1) return "";
  let extra = "";
  const s = signals[0];
  const a = src.get(s, view.t);
  const sc = (scalesOf(s) || [1])[h.layer] || 1;
  if (a) extra += `<br><span class="dim">÷ scale</span> ${fmt(a[h.layer * per + idx] / sc, 3)}`;
  const st = view.stats[s];
  if (st && view.t < st.n) {
    extra += `<br><span class="dim">layer ‖x‖</span> ${fmt(st.norm[view.t * Ls + h.layer], 1)}`;
    extra += ` <span class="dim">sparsity</span> ${fmt(st.sp[view.t * Ls + h.layer], 2)}`;
  }
  return extra;
}

on("drawn", updateReadout);

export function wireReadout() {
  const canvas = $("view");
  canvas.addEventListener("mousemove", (e) => {
    const r = canvas.getBoundingClientRect();
    const h = renderer.hit(e.clientX - r.left, e.clientY - r.top);
    view.hover = h;
    renderer.setHover(h);
    updateReadout();
    if (h) placeTip(e);
  });
  canvas.addEventListener("mouseleave", () => { view.hover = null; renderer.setHover(null); updateReadout(); });
}
