// Markers (llmri.readouts.markers): notable tokens as small ticks over the timeline's strips, their reason on
// hover; n / p move the playhead to the next / previous marked token.
import { markerList } from "./readouts.js";
import { S, on } from "./state.js";
import { stripGeometry } from "./timeline.js";
import { hideTip, showTip } from "./readout.js";
import { $, esc } from "./ui.js";

export const M = { list: [], key: null };

/** The marked token indices, sorted and distinct. */
export function markedTokens() {
  return [...new Set(M.list.map((m) => m.token))].sort((a, b) => a - b);
}

/** The next (dir 1) or previous (dir -1) marked token from t, or -1. */
export function markerFrom(t, dir) {
  const ts = markedTokens();
  if (dir > 0) return ts.find((x) => x > t) ?? -1;
  for (let i = ts.length - 1; i >= 0; i--) if (ts[i] < t) return ts[i];
  return -1;
}

function reasonsAt(t) {
  return M.list.filter((m) => m.token === t);
}

export function drawMarkers() {
  const el = $("marker-ticks");
  el.innerHTML = "";
  if (!S.cur || !M.list.length) { el.hidden = true; return; }
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
  if (!S.cur) return;
  const key = S.cur.summary.key;
  const list = await markerList().catch(() => []);
  if (!S.cur || S.cur.summary.key !== key) return;
  M.list = list;
  M.key = key;
  drawMarkers();
}

let timer = 0;
on("open", () => { M.list = []; drawMarkers(); loadMarkers(); });
on("grow", () => { if (!timer) timer = setTimeout(() => { timer = 0; loadMarkers(); }, 2000); }); // at most every 2 s
on("resize", () => drawMarkers());

export function wireMarkers(seek, stop) {
  const el = $("marker-ticks");
  el.addEventListener("click", (e) => {
    const t = e.target.dataset && e.target.dataset.t;
    if (t !== undefined) { stop(); seek(Number(t)); }
  });
  el.addEventListener("mousemove", (e) => {
    const t = e.target.dataset && e.target.dataset.t;
    if (t === undefined) { hideTip(); return; }
    const tok = S.tokens[Number(t)];
    const all = reasonsAt(Number(t));
    let lines = all.slice(0, 5).map((m) => `<div><span class="h">${esc(m.kind)}</span> ${esc(m.reason)}</div>`).join("");
    if (all.length > 5) lines += `<div class="dim">and ${all.length - 5} more</div>`;
    showTip(`<b>token ${t}</b> ${esc(tok ? tok.text : "")}${lines}`, e);
  });
  el.addEventListener("mouseleave", hideTip);
}
