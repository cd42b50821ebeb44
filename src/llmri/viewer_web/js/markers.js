// @ts-check
// Markers (llmri.readouts.markers): notable tokens as small ticks over the timeline's strips, their reason on
// hover; n / p move the playhead to the next / previous marked token.
import { markerList } from "./readoutcache.js";
import { view, on } from "./state.js";
import { stripGeometry } from "./timeline.js";
import { hideTip, showTip } from "./inspector.js";
import { $, dataOf, esc } from "./ui.js";

/** The markers of the session shown (this module writes them; main.js hands them to tests as window.llmri.markers). */
export const markerState = {
  /** @type {import("./readoutcache.js").Marker[]} */ list: [],
  /** @type {string | null} */ key: null, // the session they are of
  /** @type {Set<string>} */ off: new Set(), // the kinds the user turned off
};

const shown = () => markerState.list.filter((m) => !markerState.off.has(m.kind));

/** The marked token indices (of the kinds turned on), sorted and distinct. */
export function markedTokens() {
  return [...new Set(shown().map((m) => m.token))].sort((a, b) => a - b);
}

/** The next (dir 1) or previous (dir -1) marked token from t, or -1. @param {number} t @param {number} dir */
export function markerFrom(t, dir) {
  const ts = markedTokens();
  if (dir > 0) return ts.find((x) => x > t) ?? -1;
  for (let i = ts.length - 1; i >= 0; i--) if (ts[i] < t) return ts[i];
  return -1;
}

/** @param {number} t */
function reasonsAt(t) {
  return shown().filter((m) => m.token === t);
}

/** The kinds this session's markers have, each a toggle with its count; and the current token's reasons. */
function drawPanel() {
  const panel = $("marker-panel");
  panel.hidden = !markerState.list.length;
  if (!markerState.list.length) return;
  /** @type {Map<string, number>} */
  const counts = new Map();
  for (const m of markerState.list) counts.set(m.kind, (counts.get(m.kind) || 0) + 1);
  const el = $("marker-kinds");
  el.innerHTML = "";
  for (const [kind, n] of counts) {
    const b = document.createElement("button");
    b.className = `mkind mk-${kind}${markerState.off.has(kind) ? "" : " on"}`;
    b.dataset.kind = kind;
    b.textContent = `${kind.replace(/_/g, " ")} ${n}`;
    b.title = markerState.off.has(kind) ? "hidden: click to show these markers" : "click to hide these markers (n / p skip them)";
    b.onclick = () => {
      if (markerState.off.has(kind)) markerState.off.delete(kind); else markerState.off.add(kind);
      drawMarkers();
    };
    el.appendChild(b);
  }
  drawHere(view.t);
}

/** @param {number} t */
function drawHere(t) {
  const here = reasonsAt(t);
  const el = $("marker-here");
  el.innerHTML = here.length
    ? here.slice(0, 4).map((m) => `<div><span class="h">${esc(m.kind)}</span> ${esc(m.reason)}</div>`).join("") +
      (here.length > 4 ? `<div class="dim">and ${here.length - 4} more</div>` : "")
    : `<span class="dim">no marker at this token</span>`;
}

export function drawMarkers() {
  drawPanel();
  const el = $("marker-ticks");
  el.innerHTML = "";
  if (!view.cur || !markerState.list.length) { el.hidden = true; return; }
  el.hidden = false;
  const g = stripGeometry();
  if (!g.n) return;
  const frag = document.createDocumentFragment();
  for (const t of markedTokens()) {
    const ms = reasonsAt(t);
    const tick = document.createElement("span");
    tick.className = `mk mk-${ms[0].kind}`;
    tick.dataset.t = String(t);
    tick.setAttribute("aria-label", ms.map((m) => m.reason).join("; ")); // the tooltip shows them on hover
    tick.style.left = `${g.left + ((t + 0.5) / g.n) * g.W - 3}px`; // CSSOM (the CSP blocks style attributes)
    frag.appendChild(tick);
  }
  el.appendChild(frag);
}

async function loadMarkers() {
  if (!view.cur) return;
  const key = view.cur.summary.key;
  const list = await markerList().catch(() => []);
  if (!view.cur || view.cur.summary.key !== key) return;
  markerState.list = list;
  markerState.key = key;
  drawMarkers();
}

let timer = 0;
on("open", () => { markerState.list = []; drawMarkers(); loadMarkers(); });
on("grow", () => { if (!timer) timer = setTimeout(() => { timer = 0; loadMarkers(); }, 2000); }); // at most every 2 s
on("resize", () => drawMarkers());
on("seek", (t) => { if (markerState.list.length) drawHere(t); });

/** @param {(t: number) => void} seek @param {() => void} stop */
export function wireMarkers(seek, stop) {
  const el = $("marker-ticks");
  el.addEventListener("click", (e) => {
    const t = dataOf(e, "t");
    if (t !== undefined) { stop(); seek(Number(t)); }
  });
  el.addEventListener("mousemove", (e) => {
    const t = dataOf(e, "t");
    if (t === undefined) { hideTip(); return; }
    const tok = view.tokens[Number(t)];
    const all = reasonsAt(Number(t));
    let lines = all.slice(0, 5).map((m) => `<div><span class="h">${esc(m.kind)}</span> ${esc(m.reason)}</div>`).join("");
    if (all.length > 5) lines += `<div class="dim">and ${all.length - 5} more</div>`;
    showTip(`<b>token ${t}</b> ${esc(tok ? tok.text : "")}${lines}`, e);
  });
  el.addEventListener("mouseleave", hideTip);
}
