// @ts-check
// The study overview: the running statistics stored with a study (GET /api/stores/{store}/study),
// per signal a table of layers with the norms' count, mean, std and quantiles, the mean as a bar.
import { getJSON } from "./api.js";
import { view } from "./state.js";
import { $, banner, errorText, esc } from "./ui.js";

/**
 * @typedef {object} StudyStats
 * @property {string} store
 * @property {string[]} signals
 * @property {string[]} layers
 * @property {number} n_sessions
 * @property {Record<string, Record<string, (number | null)[]>>} stats signal -> field -> [per layer]
 */

const FIELDS = ["count", "mean", "std", "p01", "p50", "p99"];

/** @param {number | null | undefined} v */
function num(v) {
  if (v === null || v === undefined) return "–";
  return Number.isInteger(v) ? String(v) : v.toPrecision(4);
}

/** The overview's HTML. @param {StudyStats} d */
export function studyHtml(d) {
  if (!d.n_sessions) return `<p class="dim">no study in this store: its sessions were not captured by capture_many</p>`;
  const parts = [`<p class="dim">${d.n_sessions} prompts · L2 norms of each token's vector per layer; quantiles from a log histogram (to within ~12%)</p>`];
  for (const sig of d.signals) {
    const st = d.stats[sig] || {};
    const means = (st.mean || []).map((v) => v || 0);
    const top = Math.max(1e-12, ...means);
    const rows = d.layers.map((layer, i) => {
      const cells = FIELDS.map((f) => `<td>${num((st[f] || [])[i])}</td>`).join("");
      const w = Math.round(((means[i] || 0) / top) * 100);
      return `<tr><td>${esc(layer)}</td>${cells}<td class="bar"><span data-w="${w}"></span></td></tr>`;
    });
    parts.push(
      `<h4>${esc(sig)}</h4><table class="study-table" data-signal="${esc(sig)}"><tr><th>layer</th>` +
        FIELDS.map((f) => `<th>${f}</th>`).join("") + `<th>mean, vs the largest</th></tr>${rows.join("")}</table>`,
    );
  }
  return parts.join("");
}

/** Shows the overview of the study the current session belongs to (else the first store holding one). */
export async function showStudy() {
  const cur = view.cur && view.cur.summary.study ? view.cur.summary : view.sessions.find((s) => s.study);
  if (!cur) return;
  try {
    /** @type {StudyStats} */
    const d = await getJSON(`/api/stores/${encodeURIComponent(cur.store)}/study`);
    const body = $("study-body");
    body.innerHTML = studyHtml(d);
    // the bars' widths through the CSSOM (the page's CSP allows no style attribute in markup)
    for (const el of body.querySelectorAll("td.bar span")) if (el instanceof HTMLElement) el.style.width = `${el.dataset.w || 0}%`;
    $("study").hidden = false;
  } catch (e) {
    banner(`cannot read the study's statistics: ${errorText(e)}`, "error");
  }
}

export function wireStudy() {
  $("study-btn").onclick = () => { if ($("study").hidden) showStudy(); else $("study").hidden = true; };
  $("study-close").onclick = () => { $("study").hidden = true; };
}
