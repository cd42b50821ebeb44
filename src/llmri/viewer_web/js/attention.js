// @ts-check
// Attention per head: a layer x head grid for the current token (colour = the head's entropy or its weight on
// position 0, the sink). Click a head, or a layer's label for all its heads: the token strip highlights the
// positions it attends to, with their weights on hover.
import { attentionRow, cachedAttention, has } from "./readoutcache.js";
import { view, on } from "./state.js";
import { $, fmt, segment, setSeg } from "./ui.js";

/** @typedef {import("./readoutcache.js").AttentionRow} AttentionRow */
/** @typedef {{layer: number, head: number}} Pick head -1: all heads of the layer */

/** The attention panel's state (this module writes it; main.js hands it to tests as window.llmri.attention). */
export const attentionState = {
  colour: "entropy", // "entropy" | "sink"
  /** @type {Pick | null} */ pick: null,
  /** @type {AttentionRow | null} */ row: null, // the attention row shown
  /** @type {Map<number, number>} */ weights: new Map(), // token index -> weight, highlighted on the strip
};

/** The weights head `head` of layer `layer` gives each position (head -1: the mean over the layer's heads).
 * @param {AttentionRow | null} row @param {number} layer @param {number} head */
export function attended(row, layer, head) {
  /** @type {Map<number, number>} */
  const out = new Map();
  if (!row) return out;
  const heads = head >= 0 ? [head] : row.top_pos[layer].map((_, h) => h);
  const live = heads.filter((h) => row.top_pos[layer][h].some((p) => p >= 0));
  for (const h of live) {
    row.top_pos[layer][h].forEach((p, j) => {
      const w = row.top_weight[layer][h][j];
      if (p >= 0 && w !== null) out.set(p, (out.get(p) || 0) + w / live.length);
    });
  }
  return out;
}

/** @param {number | null | undefined} v @param {number} lo @param {number} hi */
function colourOf(v, lo, hi) {
  const lut = view.luts.energy || view.luts.grayscale;
  if (v === null || v === undefined || !lut) return "#1a2230";
  const u = hi > lo ? (v - lo) / (hi - lo) : 0.5;
  const i = Math.max(0, Math.min(255, Math.round(u * 255)));
  return `rgb(${lut[3 * i]},${lut[3 * i + 1]},${lut[3 * i + 2]})`;
}

/** The layer x head grid of one attention row into `el` (reused by the live chat). `onPick(layer, head)`.
 * @param {HTMLElement} el @param {AttentionRow | null} row @param {Pick | null} pick @param {string} colour
 * @param {(layer: number, head: number) => void} onPick */
export function renderGrid(el, row, pick, colour, onPick) {
  el.innerHTML = "";
  if (!row) { el.innerHTML = `<span class="dim">no attention for this token yet</span>`; return; }
  const vals = colour === "sink" ? row.sink : row.entropy;
  const flat = /** @type {number[]} */ (vals.flat().filter((v) => v !== null));
  const lo = colour === "sink" ? 0 : Math.min(...flat), hi = colour === "sink" ? 1 : Math.max(...flat);
  const L = vals.length;
  const frag = document.createDocumentFragment();
  for (let l = L - 1; l >= 0; l--) {
    const line = document.createElement("div");
    line.className = "ag-row";
    const lab = document.createElement("button");
    lab.className = `ag-l${pick && pick.layer === l && pick.head < 0 ? " on" : ""}`;
    lab.textContent = `L${l}`;
    lab.title = `all heads of layer ${l}`;
    lab.dataset.l = String(l);
    lab.dataset.h = "-1";
    lab.onclick = () => onPick(l, -1);
    line.appendChild(lab);
    vals[l].forEach((v, h) => {
      const b = document.createElement("button");
      const on_ = pick && pick.layer === l && (pick.head === h || pick.head < 0);
      b.className = `ag-c${on_ ? " on" : ""}`;
      b.dataset.l = String(l);
      b.dataset.h = String(h);
      b.title = `L${l} H${h} · entropy ${fmt(row.entropy[l][h], 2)} nats · sink ${fmt(row.sink[l][h], 2)}`;
      b.style.background = colourOf(v, lo, hi); // CSSOM: the page's CSP blocks inline style attributes
      b.onclick = () => onPick(l, h);
      line.appendChild(b);
    });
    frag.appendChild(line);
  }
  const legend = document.createElement("div");
  legend.className = "ag-legend";
  legend.textContent = colour === "sink" ? "weight on position 0: blue 0 → red 1" : `entropy: blue ${fmt(lo, 2)} → red ${fmt(hi, 2)} nats`;
  frag.appendChild(legend);
  el.appendChild(frag);
}

/** The token strip's highlight: each attended position's span shaded by its weight. */
function highlight() {
  const el = $("tokens");
  for (const span of el.querySelectorAll(".t.att")) {
    if (!(span instanceof HTMLElement)) continue;
    span.classList.remove("att");
    span.style.removeProperty("background");
    delete span.dataset.aw;
  }
  attentionState.weights = attentionState.pick && attentionState.row ? attended(attentionState.row, attentionState.pick.layer, attentionState.pick.head) : new Map();
  const max = Math.max(0, ...attentionState.weights.values());
  for (const [p, w] of attentionState.weights) {
    const span = el.children[p];
    if (!(span instanceof HTMLElement)) continue;
    span.classList.add("att");
    span.dataset.aw = w.toFixed(4);
    span.style.background = `rgba(255, 183, 77, ${(0.25 + 0.75 * (max > 0 ? w / max : 0)).toFixed(3)})`;
  }
}

/** The tooltip line of token i on the strip: its attention weight from the picked head (or ""). @param {number} i */
export function attentionTip(i) {
  const w = attentionState.weights.get(i);
  if (w === undefined || !attentionState.pick) return "";
  const who = attentionState.pick.head < 0 ? `L${attentionState.pick.layer} all heads (mean)` : `L${attentionState.pick.layer} H${attentionState.pick.head}`;
  return `<div class="gap">attention from token ${view.t} · ${who}: <b>${fmt(w, 4)}</b></div>`;
}

/** @param {number} layer @param {number} head */
function pickHead(layer, head) {
  attentionState.pick = { layer, head };
  draw();
}

function draw() {
  renderGrid($("attn-grid"), attentionState.row, attentionState.pick, attentionState.colour, pickHead);
  highlight();
  const msg = $("attn-msg");
  if (!attentionState.row) msg.textContent = "";
  else if (!attentionState.pick) msg.textContent = "click a head (or a layer) to see what it attends to";
  else {
    const top = [...attentionState.weights.entries()].sort((a, b) => b[1] - a[1]).slice(0, 3);
    const who = attentionState.pick.head < 0 ? `L${attentionState.pick.layer} · all heads` : `L${attentionState.pick.layer} H${attentionState.pick.head}`;
    msg.textContent = `${who} → ${top.map(([p, w]) => `#${p} ${fmt(w, 2)}`).join(", ")}`;
  }
}

let seq = 0;
/** @param {number} t */
async function showAttention(t) {
  const panel = $("attn-panel");
  if (!has("attention")) { panel.hidden = true; attentionState.row = null; highlight(); return; }
  panel.hidden = false;
  const mine = ++seq;
  const row = cachedAttention(t) || (await attentionRow(t).catch(() => null));
  if (mine !== seq || view.t !== t) return;
  attentionState.row = row;
  draw();
  $("attn-grid").dataset.t = String(t);
}

on("seek", (t) => showAttention(t));
on("readouts", (key, t) => { if (view.cur && view.cur.summary.key === key && view.t === t) showAttention(t); });
on("open", () => { attentionState.pick = null; attentionState.row = null; });

export function wireAttention() {
  segment($("attn-colour"), attentionState.colour, (v) => { attentionState.colour = v; setSeg($("attn-colour"), v); draw(); });
}
