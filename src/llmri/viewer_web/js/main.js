// @ts-check
// llmri viewer: pick a session, scrub its frames token by token, re-map colours, hover to read values, compare.
// This module wires the page together and boots it; the panels live in their own modules around state.js.
import { LRU, getJSON } from "./api.js";
import { attentionState, wireAttention } from "./attention.js";
import { setDiff, wireCompare } from "./compare.js";
import { featureState, wireFeatures } from "./features.js";
import { heatmapState, wireHeatmap } from "./heatmap.js";
import { wireLens } from "./lens.js";
import { markerFrom, markerState, wireMarkers } from "./markers.js";
import { wireProbes } from "./probes.js";
import { wireReadout } from "./inspector.js";
import { pairState, wirePairing } from "./pairing.js";
import { emptyStoreState, openSession, refreshSessions, wireSearch } from "./session.js";
import { wireStudy } from "./study.js";
import { emit, setReady, view } from "./state.js";
import { fetchFailed, layout, renderer, savePng, setCmap, setColormaps, updateColorbar, wireTiles, whenDrawn } from "./tiles.js";
import { drawSparklines, play, seek, stop, wireTimeline } from "./timeline.js";
import { $, banner, errorText } from "./ui.js";

function wire() {
  const select = $("session-select", HTMLSelectElement);
  select.onchange = () => openSession(select.value).catch(fetchFailed);
  wireTimeline();
  wireTiles();
  wireCompare();
  wireReadout();
  wireLens((/** @type {number} */ t) => { stop(); seek(t); });
  wireAttention();
  wireProbes((/** @type {number} */ t) => { stop(); seek(t); });
  wireMarkers(seek, stop);
  wireFeatures(seek, stop);
  wirePairing((/** @type {number} */ t) => { stop(); seek(t); });
  wireHeatmap(async (key) => { await refreshSessions(); await openSession(key); });
  $("help-btn").onclick = () => { $("help").hidden = !$("help").hidden; };
  wireSearch();
  wireStudy();
  document.addEventListener("keydown", onKey);
  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => { layout(); drawSparklines(); emit("resize"); }, 120);
  });
}

/** @param {KeyboardEvent} e */
function onKey(e) {
  if (!view.cur || !view.src) return;
  const target = e.target;
  if (target instanceof HTMLSelectElement) return;
  if (target instanceof HTMLInputElement) {
    if (target.type !== "range" && target.type !== "checkbox") return;
    if (target.type === "range" && target.id !== "slider" && (e.key === "ArrowLeft" || e.key === "ArrowRight")) return;
  }
  const big = e.shiftKey ? 10 : 1;
  let handled = true;
  if (e.key === "ArrowRight") { stop(); seek(view.t + big); }
  else if (e.key === "ArrowLeft") { stop(); seek(view.t - big); }
  else if (e.key === "Home") { stop(); seek(0); }
  else if (e.key === "End") { stop(); seek(view.src.total - 1); }
  else if (e.key === " ") { view.playing ? stop() : play(); }
  else if (e.key === "g") setCmap("grayscale");
  else if (e.key === "e") setCmap("energy");
  else if (e.key === "d") setCmap("diverging");
  else if (e.key === "n" || e.key === "p") jumpMarker(e.key === "n" ? 1 : -1);
  else if (e.key === "c") setDiff(view.diff === "prev" ? "off" : "prev");
  else if (e.key === "s") savePng();
  else if (e.key === "Escape") { $("help").hidden = true; $("study").hidden = true; $("patching").hidden = true; }
  else if (e.key === "?") $("help").hidden = !$("help").hidden;
  else handled = false;
  if (handled) e.preventDefault();
}

/** n / p: the playhead to the next / previous marked token (if any). @param {number} dir */
function jumpMarker(dir) {
  const t = markerFrom(view.t, dir);
  if (t >= 0) { stop(); seek(t); }
}

/** A remote viewer's launch token came in the URL; once a request has worked without it (the page load set
 * its HttpOnly cookie), take it out of the address bar and this history entry. Other parameters and the hash stay. */
function dropTokenFromUrl() {
  const isToken = (/** @type {string} */ part) => {
    try { return decodeURIComponent(part.split("=", 1)[0].replace(/\+/g, " ")) === "token"; } catch { return false; }
  };
  const parts = location.search.slice(1).split("&").filter(Boolean);
  const kept = parts.filter((p) => !isToken(p));
  if (kept.length === parts.length) return;
  history.replaceState(history.state, "", `${location.pathname}${kept.length ? `?${kept.join("&")}` : ""}${location.hash}`);
}

async function main() {
  wire();
  try {
    const cm = await getJSON("/api/colormaps");
    setColormaps(cm.luts);
  } catch (e) {
    banner(`cannot reach the viewer server: ${errorText(e)}`, "error");
    return;
  }
  dropTokenFromUrl();
  updateColorbar();
  await refreshSessions();
  const [hk, hs, ht] = decodeURIComponent(location.hash.slice(1)).split("/");
  const want = hk && hs ? `${hk}/${hs}` : null;
  const first = view.sessions.find((s) => s.key === want) || view.sessions[0];
  if (first) await openSession(first.key, first.key === want ? Number(ht) || 0 : 0);
  else emptyStoreState();
  window.llmri.ready = true;
  setReady();
  setInterval(async () => {
    if (document.hidden) return;
    const changed = await refreshSessions();
    if (changed && !view.cur && view.sessions.length) openSession(view.sessions[0].key);
  }, 4000);
}

// A handle for tests and benchmarks (and for curious users in the console); the page itself never reads it.
// live.js adds `live` (its chat state) once the chat panel is up.
window.llmri = {
  ready: false,
  state: view,
  renderer,
  seek,
  setCmap,
  setDiff,
  openSession,
  clearCache: () => LRU.clear(),
  /** Resolves when frame t has been drawn. */
  whenDrawn,
  get drawCount() { return view.drawCount; },
  get drawn() { return view.drawn; },
  markers: markerState, // the session's markers ({list})
  attention: attentionState, // the attention panel's pick and the weights highlighted on the token strip
  features: featureState, // the SAE features panel (its SAE, pins, matches) and the feature strip
  pair: pairState, // the comparison with the baseline of the session shown (pairing.js)
  heatmap: heatmapState, // the patching sweep shown (heatmap.js)
};

main().catch((e) => banner(`viewer error: ${errorText(e)}`, "error"));
