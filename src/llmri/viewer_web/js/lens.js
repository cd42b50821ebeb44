// @ts-check
// The logit lens: a panel for the current token (layers as rows, each layer's top tokens with their
// probabilities, the token that came next highlighted where it appears, the decision layer marked), and the
// lens strip over the whole session (token x layer, coloured by the probability each layer gave the next token).
import { cachedLens, has, lensRow, lensStrip } from "./readoutcache.js";
import { view, on } from "./state.js";
import { beginLayerStrip, layerStripPlayhead } from "./timeline.js";
import { hideTip, showTip } from "./inspector.js";
import { $, esc, fmt, oneLine } from "./ui.js";

/** @typedef {import("./readoutcache.js").LensRow} LensRow */

/** The token that came after position t: the row's own next_id, else the token strip's, else the last layer's
 * entry of the next token's rank (the live chat, before the next token's record arrives).
 * @param {LensRow} row @param {number} t @returns {number} */
export function nextIdOf(row, t) {
  if (row.next_id !== undefined && row.next_id !== null) return row.next_id;
  const tok = view.tokens[t + 1];
  if (tok) return tok.id;
  const L = row.top_ids.length;
  const r = row.next_rank ? row.next_rank[L - 1] : -1;
  return r >= 0 && r < row.top_ids[L - 1].length ? row.top_ids[L - 1][r] : -1;
}

const pct = (/** @type {number | null | undefined} */ p) => (p === null || p === undefined ? "–" : p >= 0.995 ? "100" : (p * 100).toFixed(p < 0.1 ? 1 : 0));

/** The lens of one position into `el`: one row per layer (reused by the live chat). `layers`: the layer names.
 * @param {HTMLElement} el @param {LensRow | null} row @param {number} t @param {string[]} layers */
export function renderLens(el, row, t, layers) {
  if (!row) { el.innerHTML = `<span class="dim">no lens for this token yet</span>`; return; }
  const next = nextIdOf(row, t);
  const L = row.top_ids.length;
  const decision = row.decision !== undefined ? row.decision : -1;
  let html = `<div class="lens-head"><span>layer</span><span>top tokens (p)</span><span title="probability of the token that came next">p(next)</span></div>`;
  for (let l = L - 1; l >= 0; l--) {
    const dec = l === decision ? " decided" : "";
    html += `<div class="lens-row${dec}" data-l="${l}" title="${esc(layers[l] || `layer ${l}`)}${dec ? " · decision layer: from here on the top-1 is the final answer" : ""}">`;
    html += `<span class="ll">${dec ? "◆" : ""}L${l}</span><span class="lt">`;
    row.top_ids[l].forEach((id, j) => {
      if (id < 0) return;
      const text = row.top_text ? row.top_text[l][j] : `#${id}`;
      const p = row.top_probs[l][j];
      const hit = id === next ? " next" : "";
      html += `<span class="lc${hit}" data-id="${id}" title="${esc(oneLine(text))} · id ${id} · p ${fmt(p, 4)}">` +
        `<span class="lx">${esc(oneLine(text))}</span><span class="lp">${pct(p)}</span></span>`;
    });
    const np = row.next_prob ? row.next_prob[l] : null;
    const rank = row.next_rank ? row.next_rank[l] : -1;
    html += `</span><span class="ln" title="rank ${rank < 0 ? "–" : rank}">${np === null || np === undefined ? "–" : pct(np)}</span></div>`;
  }
  el.innerHTML = html;
}

/** The line under the lens: the token that came next, and where it was decided. @param {LensRow} row @param {number} t */
function sub(row, t) {
  const next = nextIdOf(row, t);
  const tok = view.tokens[t + 1];
  let name = tok && tok.id === next ? oneLine(tok.text) : next >= 0 ? `#${next}` : "";
  const text = row.top_text;
  if (!(tok && tok.id === next) && text) { // the live chat: the next token's record is still on its way
    row.top_ids.forEach((ids, l) => { const j = ids.indexOf(next); if (j >= 0) name = oneLine(text[l][j]); });
  }
  const d = row.decision !== undefined && row.decision >= 0 ? ` · decided at L${row.decision}` : "";
  return next >= 0 ? `→ next “${name}”${d}` : "last token: no next";
}

let seq = 0;
/** @param {number} t */
async function showLens(t) {
  const panel = $("lens-panel");
  if (!has("lens")) { panel.hidden = true; return; }
  panel.hidden = false;
  const mine = ++seq;
  const row = cachedLens(t) || (await lensRow(t).catch(() => null));
  if (mine !== seq || view.t !== t || !view.cur) return;
  renderLens($("lens"), row, t, view.cur.meta.layers || []);
  $("lens-sub").textContent = row ? sub(row, t) : "";
  $("lens").dataset.t = String(t);
}

on("seek", (t) => showLens(t));
on("readouts", (key, t) => { if (view.cur && view.cur.summary.key === key && view.t === t) showLens(t); });

// ---------------------------------------------------------------------------------------------
// the lens strip: next_prob per token and layer, under the norm strip and on its time axis
/** @type {{n: number, L: number, data: Float32Array, decision: Int32Array} | null} */
let strip = null;
/** @type {import("./timeline.js").LayerStrip | null} */
let stripImg = null;

export async function loadLensStrip() {
  const c = $("lens-strip", HTMLCanvasElement);
  if (!has("lens")) { strip = null; c.hidden = true; return; }
  c.hidden = false;
  strip = await lensStrip().catch(() => null);
  drawLensStrip();
}

export function drawLensStrip() {
  const c = $("lens-strip", HTMLCanvasElement);
  if (!strip || c.hidden) return;
  const { ctx, g, dpr, rowH, cssH } = beginLayerStrip(c, strip.L, "lens");
  const lut = view.luts.energy || view.luts.grayscale;
  const n = Math.max(g.n, strip.n);
  const W = g.W;
  for (let x = 0; x < W && n; x++) {
    const a = Math.floor((x / W) * n), b = Math.max(a + 1, Math.floor(((x + 1) / W) * n));
    for (let l = 0; l < strip.L; l++) {
      let v = -1;
      for (let t = a; t < b && t < strip.n; t++) { const p = strip.data[t * strip.L + l]; if (p === p) v = Math.max(v, p); }
      if (v < 0) continue;
      const i = Math.max(0, Math.min(255, Math.round(v * 255)));
      ctx.fillStyle = `rgb(${lut[3 * i]},${lut[3 * i + 1]},${lut[3 * i + 2]})`;
      ctx.fillRect(g.left + x, (strip.L - 1 - l) * rowH, 1, rowH); // the last layer on top, as in the panel
    }
  }
  // each token's decision layer (the first from which the top-1 stays the final one), where a token has room
  if (W / Math.max(1, n) >= 3) {
    ctx.fillStyle = "#ffffff";
    for (let t = 0; t < strip.n; t++) {
      const d = strip.decision[t];
      if (d < 0) continue;
      const x0 = g.left + (t / n) * W, x1 = g.left + ((t + 1) / n) * W;
      ctx.fillRect(Math.round(x0 + 1), (strip.L - 1 - d) * rowH + rowH / 2 - 0.5, Math.max(1, Math.round(x1 - x0) - 2), 1.5);
    }
  }
  stripImg = { img: ctx.getImageData(0, 0, c.width, c.height), rowH, n, W, left: g.left, dpr, cssH };
  drawLensPlayhead();
}

/** A strip on the norm strip's time axis, its saved image put back with the playhead over it (the lens strip,
 * the feature strip). @param {HTMLCanvasElement} c
 * @param {{img: ImageData, n: number, W: number, left: number, dpr: number, cssH: number} | null} saved */
export function drawStripPlayhead(c, saved) {
  if (saved) layerStripPlayhead(c, saved);
}

const drawLensPlayhead = () => drawStripPlayhead($("lens-strip", HTMLCanvasElement), stripImg);

on("seek", () => drawLensPlayhead());

let stripTimer = 0;
// a growing session (a recording, the live chat): again at most every 1.5 s while frames stream in
on("grow", () => { if (!stripTimer) stripTimer = setTimeout(() => { stripTimer = 0; loadLensStrip(); }, 1500); });
on("open", () => loadLensStrip());
on("resize", () => drawLensStrip());

/** The token and layer under the mouse on the lens strip, or null. @param {MouseEvent} e */
function stripAt(e) {
  if (!stripImg || !strip) return null;
  const r = $("lens-strip").getBoundingClientRect();
  const u = (e.clientX - r.left - stripImg.left) / stripImg.W;
  const t = Math.floor(u * stripImg.n);
  const l = strip.L - 1 - Math.floor((e.clientY - r.top) / stripImg.rowH);
  return u >= 0 && u <= 1 && t < stripImg.n && l >= 0 && l < strip.L ? { t, l } : null;
}

/** @param {(t: number) => void} seek */
export function wireLens(seek) {
  const c = $("lens-strip");
  c.addEventListener("mousedown", (e) => { const h = stripAt(e); if (h) seek(h.t); });
  c.addEventListener("mousemove", (e) => {
    const h = stripAt(e);
    if (!h || !strip) { hideTip(); return; }
    const tok = view.tokens[h.t], nxt = view.tokens[h.t + 1];
    const p = strip.data[h.t * strip.L + h.l];
    const d = strip.decision[h.t];
    showTip(`<span class="h">token ${h.t}</span> ${esc(oneLine(tok ? tok.text : ""))}<br>L${h.l} p(next “${esc(oneLine(nxt ? nxt.text : "–"))}”) <b>${fmt(p === p ? p : null, 3)}</b>` +
      (d >= 0 ? `<br><span class="dim">decided at L${d} (white mark)</span>` : ""), e);
  });
  c.addEventListener("mouseleave", hideTip);
}
