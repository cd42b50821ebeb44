// What the mouse and the playhead point at: the hovered pixel's values (Readout panel and tooltip) and the
// current token's probabilities (Token panel).
import { valueText } from "./overflow.js";
import { S, on } from "./state.js";
import { frameValues, renderer, scalesOf } from "./tiles.js";
import { $, esc, fmt, oneLine } from "./ui.js";

const isNeurons = () => S.cur && (S.cur.meta.reducer || {}).kind === "neurons";

// ---------------------------------------------------------------------------------------------
// the tooltip
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

function placeTip(ev) {
  const tip = $("tooltip");
  const x = Math.min(ev.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
  const y = Math.min(ev.clientY + 14, window.innerHeight - tip.offsetHeight - 8);
  tip.style.left = `${x}px`;
  tip.style.top = `${y}px`;
}

/** Inline styles are blocked by the page's CSP, so bar widths are set through the CSSOM. */
function setBars(el) {
  for (const b of el.querySelectorAll(".bar[data-w]")) b.style.width = `${b.dataset.w}%`;
}

// ---------------------------------------------------------------------------------------------
// the token
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
  $("token-info").innerHTML = tokenHTML(S.tokens[t]);
  setBars($("token-info"));
});

// ---------------------------------------------------------------------------------------------
// the hovered pixel
function updateReadout() {
  const h = S.hover;
  const el = $("readout");
  if (!h || !S.cur || !renderer.layout) {
    el.innerHTML = `<span class="dim">hover a pixel</span>`;
    hideTip();
    return;
  }
  const L = renderer.layout;
  const grid = L.grids[h.grid];
  const idx = h.y * S.cur.meta.tile[1] + h.x;
  const per = L.h * L.w;
  const pixelName = pixelNameOf(idx);
  let rows = "";
  let headline = "";
  for (const s of grid.signals) {
    const a = S.src.get(s, S.t);
    const val = a ? a[h.layer * per + idx] : NaN;
    const sc = (scalesOf(s) || [1])[h.layer] || 1;
    let line = valueText(val, fmt);
    if (S.diff !== "off") {
      const d = frameValues(s, S.t);
      const dv = d ? d[h.layer * per + idx] : NaN;
      line = `Δ ${valueText(dv, fmt)}  (this ${valueText(val, fmt)})`;
      if (!headline) headline = valueText(dv, fmt);
    } else if (!headline) headline = valueText(val, fmt);
    rows += `<span>${esc(s)}</span><span>${line}</span>`;
    rows += `<span>÷ scale</span><span>${fmt(val / sc, 3)} <span class="dim">(scale ${fmt(sc, 2)})</span></span>`;
    const st = S.stats[s];
    if (st && S.t < st.n) {
      const Ls = S.cur.meta.layers.length;
      rows += `<span>layer ‖x‖</span><span>${fmt(st.norm[S.t * Ls + h.layer], 1)}</span>`;
      rows += `<span>sparsity</span><span>${fmt(st.sp[S.t * Ls + h.layer], 3)}</span>`;
    }
  }
  el.innerHTML =
    `<div class="big">${headline}</div>` +
    `<div class="kv"><span>layer</span><span>${h.layer} <span class="dim">${esc(S.cur.meta.layers[h.layer] || "")}</span></span>` +
    `<span>signal</span><span>${esc(grid.signals.join(" + "))}</span>` +
    `<span>${isNeurons() ? "neuron" : "pixel"}</span><span>${pixelName.replace(/^(neuron|pixel) /, "")} <span class="dim">(row ${h.y}, col ${h.x})</span></span>` +
    rows +
    `</div>`;
  const tip = $("tooltip");
  tip.innerHTML =
    `<span class="h">${esc(grid.signals.join("+"))} · L${h.layer} · ${pixelName}</span> <span class="dim">(r${h.y}, c${h.x})</span>` +
    `<br>${S.diff !== "off" ? "Δ " : ""}value <b>${headline}</b>${tipExtra(grid, h, idx, per)}`;
  tip.hidden = false;
}

/** Pixel idx by what it is: a neuron under the neurons reducer (or the padding after the last one). */
function pixelNameOf(idx) {
  const red = S.cur.meta.reducer || {};
  const nValues = red.n_values || (isNeurons() ? S.cur.meta.model && S.cur.meta.model.d_model : null);
  if (!isNeurons()) return `pixel ${idx}`;
  return nValues && idx >= nValues ? `pixel ${idx} (padding)` : `neuron ${idx}`;
}

/** The tooltip's second line for a one-signal grid: the scaled value and the layer's norm and sparsity. */
function tipExtra(grid, h, idx, per) {
  if (grid.signals.length !== 1) return "";
  let extra = "";
  const s = grid.signals[0];
  const a = S.src.get(s, S.t);
  const sc = (scalesOf(s) || [1])[h.layer] || 1;
  if (a) extra += `<br><span class="dim">÷ scale</span> ${fmt(a[h.layer * per + idx] / sc, 3)}`;
  const st = S.stats[s];
  if (st && S.t < st.n) {
    const Ls = S.cur.meta.layers.length;
    extra += `<br><span class="dim">layer ‖x‖</span> ${fmt(st.norm[S.t * Ls + h.layer], 1)}`;
    extra += ` <span class="dim">sparsity</span> ${fmt(st.sp[S.t * Ls + h.layer], 2)}`;
  }
  return extra;
}

on("drawn", updateReadout);

export function wireReadout() {
  const view = $("view");
  view.addEventListener("mousemove", (e) => {
    const r = view.getBoundingClientRect();
    const h = renderer.hit(e.clientX - r.left, e.clientY - r.top);
    S.hover = h;
    renderer.setHover(h);
    updateReadout();
    if (h) placeTip(e);
  });
  view.addEventListener("mouseleave", () => { S.hover = null; renderer.setHover(null); updateReadout(); });
}
