// @ts-check
// A patching sweep's heatmap (llmri.patching with store=: the corrupt session holds it, GET .../patching): per signal,
// layers × positions, each cell coloured by how far patching it from the clean run restores the clean score
// (normalized: 1 restores it, 0 leaves the corrupt one). Clicking a cell opens that patched run: the one stored
// where the cell was run before, else the server runs it now on its model (POST .../patching/run; one forward of
// the prompt, kept for the next click) and the viewer opens it, compared with the corrupt run (pairing.js).
import { getJSON, postJSON, sessionUrl } from "./api.js";
import { on, view } from "./state.js";
import { $, errorText, esc, fmt, oneLine } from "./ui.js";

/**
 * What GET .../patching answers (PatchingResult.to_dict() and more).
 * @typedef {object} Sweep
 * @property {number[][][]} values [signal][layer][position]: the metric with that cell patched
 * @property {number[][][]} normalized (values - corrupt) / (clean - corrupt)
 * @property {string[]} signals
 * @property {number[]} layers
 * @property {string[]} tokens the corrupt prompt's
 * @property {number} clean
 * @property {number} corrupt
 * @property {string} metric
 * @property {string[]} targets
 * @property {string | null} baseline the clean session's id
 * @property {Record<string, string>} runs "signal/layer/position" -> the id of that cell's stored run
 */

/** The sweep shown (tests read it as window.llmri.heatmap). */
export const heatmapState = {
  /** @type {string | null} */ key: null, // the session whose sweep it is
  /** @type {Sweep | null} */ sweep: null,
  busy: false, // a cell is being run
};

/** @param {string} text */
function say(text, kind = "") {
  const msg = $("patching-msg");
  msg.textContent = text;
  msg.className = kind ? `msg ${kind}` : "msg";
}

/** A normalized value as a colour of the diverging map: -1 blue (worse than corrupt) .. 0 white .. 1 red (restores the clean run).
 * @param {number} v */
function colour(v) {
  const lut = view.luts.diverging || view.luts.grayscale;
  const i = Math.max(0, Math.min(255, Math.round(((Math.max(-1, Math.min(1, v)) + 1) / 2) * 255)));
  return lut ? `rgb(${lut[3 * i]},${lut[3 * i + 1]},${lut[3 * i + 2]})` : "#888";
}

/** One signal's grid: a header row of tokens, then a row per layer (cells are buttons). @param {Sweep} d @param {number} si */
function gridHtml(d, si) {
  const sig = d.signals[si];
  let html = `<h4>${esc(sig)}</h4><div class="hm-grid" data-signal="${esc(sig)}" data-cols="${d.tokens.length}"><span></span>`;
  html += d.tokens.map((t, p) => `<span class="hm-tok" title="position ${p}">${esc(oneLine(t))}</span>`).join("");
  d.layers.forEach((layer, li) => {
    html += `<span class="hm-layer">L${layer}</span>`;
    d.tokens.forEach((t, p) => {
      const v = d.normalized[si][li][p];
      const ran = d.runs[`${sig}/${layer}/${p}`] ? " ran" : "";
      const tip = `${sig} L${layer} · position ${p} “${oneLine(t)}” · ${d.metric} ${fmt(d.values[si][li][p], 3)} · restored ${fmt(v, 2)}` +
        (ran ? " · run stored: click to open" : " · click to run and open");
      html += `<button class="hm-cell${ran}" data-s="${esc(sig)}" data-l="${layer}" data-p="${p}" data-v="${v}" title="${esc(tip)}"></button>`;
    });
  });
  return `${html}</div>`;
}

/** Shows the sweep of the session shown. */
export async function showHeatmap() {
  const cur = view.cur;
  if (!cur || !cur.summary.patching) return;
  const key = cur.summary.key;
  say("");
  try {
    /** @type {Sweep} */
    const d = await getJSON(`${sessionUrl(cur.summary)}/patching`);
    if (!view.cur || view.cur.summary.key !== key) return;
    heatmapState.key = key;
    heatmapState.sweep = d;
    const body = $("patching-body");
    body.innerHTML = `<p class="dim">${esc(d.metric)} ${d.targets.map((t) => `“${esc(oneLine(t))}”`).join(" − ")}: ` +
      `clean ${fmt(d.clean, 3)}, corrupt ${fmt(d.corrupt, 3)}; colour: how much of the clean score patching that cell ` +
      `from the clean run restores (red: all of it, white: none, blue: worse than corrupt). Click a cell to open ` +
      `that patched run (a ringed cell's run is stored; another runs now on the viewer's model).</p>` +
      d.signals.map((_, si) => gridHtml(d, si)).join("");
    // colours and the grid's columns through the CSSOM (the page's CSP allows no style attribute in markup)
    for (const g of body.querySelectorAll(".hm-grid")) {
      if (g instanceof HTMLElement) g.style.gridTemplateColumns = `auto repeat(${g.dataset.cols}, minmax(14px, 1fr))`;
    }
    for (const c of body.querySelectorAll(".hm-cell")) if (c instanceof HTMLElement) c.style.background = colour(Number(c.dataset.v));
    $("patching").hidden = false;
  } catch (e) {
    say(`cannot read the sweep: ${errorText(e)}`, "error");
    $("patching").hidden = false;
  }
}

/** A cell clicked: its run, stored or run now, opened. @param {HTMLElement} cell @param {(key: string) => Promise<void>} open */
async function openCell(cell, open) {
  const cur = view.cur;
  if (!cur || heatmapState.busy) return;
  const cellId = { signal: cell.dataset.s || "", layer: Number(cell.dataset.l), position: Number(cell.dataset.p) };
  heatmapState.busy = true;
  say(`${cellId.signal} L${cellId.layer} position ${cellId.position}: opening its run…`);
  try {
    const res = await postJSON(`${sessionUrl(cur.summary)}/patching/run`, cellId);
    say(res.ran ? "ran it now; opening" : "opening its stored run", "ok");
    $("patching").hidden = true;
    await open(res.key);
  } catch (e) {
    say(errorText(e), "error");
  } finally {
    heatmapState.busy = false;
  }
}

on("open", (cur) => {
  $("patching-btn").hidden = !cur.summary.patching;
  if (heatmapState.key !== cur.summary.key) $("patching").hidden = true;
});

/** @param {(key: string) => Promise<void>} open the session `key` (the list refreshed first: a new run is in it) */
export function wireHeatmap(open) {
  $("patching-btn").onclick = () => { if ($("patching").hidden) showHeatmap(); else $("patching").hidden = true; };
  $("patching-close").onclick = () => { $("patching").hidden = true; };
  $("patching-body").addEventListener("click", (e) => {
    const cell = e.target instanceof HTMLElement ? e.target.closest(".hm-cell") : null;
    if (cell instanceof HTMLElement) openCell(cell, open);
  });
}
