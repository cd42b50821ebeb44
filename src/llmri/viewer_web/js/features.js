// @ts-check
// SAE features (docs/sae.md, "In the viewer"): a panel for the current token (its strongest features with their
// activation and label, its L0 and reconstruction error), search by feature id or label among the features the
// session holds, and the pins the feature strip draws (featurestrip.js). Rows come from the REST route
// /features/{sae} or, in live chat, from the "readouts" messages (putLiveFeatures); every value is the session's own.
import { getJSON, sessionUrl } from "./api.js";
import { loadStrip, stripState, wireStrip } from "./featurestrip.js";
import { canSteerWith, steerWithFeature } from "./livesteer.js";
import { view, on } from "./state.js";
import { $, esc, fmt, oneLine } from "./ui.js";

/**
 * One token's features of one SAE: the stored top-k, strongest first (-1 / null past the stored ones).
 * @typedef {{ids: number[], values: (number | null)[], l0: number | null, fvu: number | null, cosine: number | null}} FeatureRow
 */
/**
 * An SAE a session holds (GET /features): its record, without the labels.
 * @typedef {{name: string, d_sae: number, d_in: number, layer: number | null, signal: string | null,
 *   architecture: string, n_labels: number, direction: boolean}} SaeInfo
 */
/** @typedef {{feature: number, label: string, fires: number, max: number, token: number}} Match */

/** What the features panel shows (this module writes it; main.js hands it to tests as window.llmri.features). */
export const featureState = {
  /** @type {string | null} */ key: null, // the session
  /** @type {SaeInfo[]} */ saes: [],
  /** @type {string | null} */ sae: null, // the SAE shown
  /** @type {number[]} */ pinned: [], // the features on the strip, in pin order
  /** @type {Map<number, string>} */ labels: new Map(), // feature -> label, of the SAE shown (as rows bring them)
  /** @type {Match[]} */ matches: [],
  /** @type {number} */ shownT: -1, // the token the panel shows
  liveRows: 0, // rows that came with the live chat's readouts messages
  strip: stripState, // featurestrip.js's: the features drawn, their values over the tokens
};

const reloadStrip = () => loadStrip(featureState.sae, featureState.pinned);

const CHUNK = 64; // positions per /features/{sae} request
const KEPT = 8; // (session, SAE) pairs whose rows stay cached
/** @type {Map<string, Map<number, FeatureRow>>} "session|sae" -> t -> row */
const caches = new Map();
/** @type {Map<string, Promise<void>>} */
const pending = new Map();

/** @param {string} key @param {string} sae */
function cacheOf(key, sae) {
  const id = `${key}|${sae}`;
  let c = caches.get(id);
  if (!c) {
    c = new Map();
    caches.set(id, c);
    for (const old of caches.keys()) { if (caches.size <= KEPT) break; caches.delete(old); }
  }
  return c;
}

/** Rows of a range doc ({start, stop, ids, values, l0, fvu, cosine}) into the cache. @param {Map<number, FeatureRow>} c @param {any} doc */
function putRows(c, doc) {
  for (let i = 0; i < doc.stop - doc.start; i++) {
    c.set(doc.start + i, { ids: doc.ids[i], values: doc.values[i], l0: doc.l0[i], fvu: doc.fvu[i], cosine: doc.cosine[i] });
  }
}

/** The live chat's readouts message: each SAE's rows of frames m.start..m.stop, before the frames arrive.
 * @param {{session: string, start: number, stop: number, sae?: Record<string, any>}} m */
export function putLiveFeatures(m) {
  for (const [name, doc] of Object.entries(m.sae || {})) {
    putRows(cacheOf(m.session, name), { start: m.start, stop: m.stop, ...doc });
    featureState.liveRows += m.stop - m.start;
  }
}

/** The row of token t of the SAE shown (fetched in chunks; null where it has none yet). @param {number} t @returns {Promise<FeatureRow | null>} */
export async function featureRow(t) {
  const cur = view.cur, sae = featureState.sae;
  if (!cur || !sae) return null;
  const c = cacheOf(cur.summary.key, sae);
  if (!c.has(t)) {
    const start = Math.floor(t / CHUNK) * CHUNK;
    const url = `${sessionUrl(cur.summary)}/features/${encodeURIComponent(sae)}?start=${start}&stop=${start + CHUNK}`;
    let p = pending.get(url);
    if (!p) {
      p = getJSON(url).then((doc) => {
        putRows(c, doc);
        for (const [f, text] of Object.entries(doc.labels || {})) featureState.labels.set(Number(f), String(text));
      }).finally(() => pending.delete(url));
      pending.set(url, p);
    }
    await p;
  }
  return c.get(t) || null;
}

/** A feature's label where the session's SAE record has one (the meta holds them all). @param {number} f */
export function labelOf(f) {
  const known = featureState.labels.get(f);
  if (known !== undefined) return known;
  const rec = ((view.cur && /** @type {any} */ (view.cur.meta).sae) || {}).saes || [];
  const mine = rec.find((/** @type {any} */ r) => r.name === featureState.sae);
  const text = mine && mine.labels ? mine.labels[String(f)] : undefined;
  return typeof text === "string" ? text : "";
}

// ---------------------------------------------------------------------------------------------
// the panel
function buildPanel() {
  const panel = $("feat-panel");
  panel.innerHTML = `
    <h2>Features <select id="feat-sae" class="feat-sae" aria-label="SAE" hidden></select></h2>
    <div id="feat-sub" class="feat-sub"></div>
    <div id="feat-list" class="feat-list" aria-label="features of this token"></div>
    <input id="feat-search" class="feat-search" type="search" placeholder="find a feature: id or label" aria-label="search features" maxlength="200">
    <div id="feat-matches" class="feat-list" aria-label="features found"></div>
    <div id="feat-pins" class="feat-pins" aria-label="features on the strip"></div>`;
}

/** A feature line: id, label, a bar of its activation against the largest shown, the value.
 * @param {number} f @param {number | null} v @param {number} top @param {string} [extra] */
function line(f, v, top, extra = "") {
  const row = document.createElement("div");
  row.className = `feat-row${featureState.pinned.includes(f) ? " pinned" : ""}`;
  row.dataset.f = String(f);
  const label = labelOf(f);
  row.title = `feature ${f}${label ? ` · ${oneLine(label)}` : ""} · click to ${featureState.pinned.includes(f) ? "unpin it from" : "pin it to"} the strip`;
  row.innerHTML = `<span class="fi">#${f}</span><span class="fl">${label ? esc(oneLine(label)) : '<span class="dim">no label</span>'}</span>` +
    `<span class="fb"><span class="fbar"></span></span><span class="fv">${fmt(v, 2)}${extra}</span>`;
  const bar = /** @type {HTMLElement} */ (row.querySelector(".fbar"));
  bar.style.width = `${Math.max(0, Math.min(100, top > 0 && v !== null ? (100 * v) / top : 0))}%`; // CSSOM: the CSP blocks style attributes
  return row;
}

/** The features of token t into the panel. @param {number} t @param {FeatureRow | null} row */
function render(t, row) {
  const list = $("feat-list");
  list.innerHTML = "";
  list.dataset.t = String(t);
  featureState.shownT = t;
  if (!row) { $("feat-sub").textContent = ""; list.innerHTML = `<span class="dim">no features for this token yet</span>`; return; }
  const top = Math.max(0, ...row.values.map((v) => v ?? 0));
  row.ids.forEach((f, j) => { if (f >= 0) list.appendChild(line(f, row.values[j], top)); });
  if (!list.children.length) list.innerHTML = `<span class="dim">no active feature</span>`;
  $("feat-sub").textContent = `L0 ${row.l0 ?? "–"} · FVU ${fmt(row.fvu, 3)} · cos ${fmt(row.cosine, 3)}`;
  $("feat-sub").title = "L0: active features; FVU: the reconstruction's fraction of variance unexplained; cos: its cosine with the vector";
}

let seq = 0;
/** @param {number} t */
async function show(t) {
  if (!featureState.sae || !view.cur) return;
  const mine = ++seq;
  const row = await featureRow(t).catch(() => null);
  if (mine !== seq || view.t !== t) return;
  render(t, row);
}

function drawPins() {
  const el = $("feat-pins");
  el.innerHTML = featureState.pinned.length ? "" : `<span class="dim">click a feature to pin it to the strip</span>`;
  for (const f of featureState.pinned) {
    const b = document.createElement("button");
    b.className = "feat-pin";
    b.dataset.f = String(f);
    b.textContent = `#${f} ×`;
    b.title = `${labelOf(f) || `feature ${f}`}: unpin`;
    el.appendChild(b);
    const info = featureState.saes.find((x) => x.name === featureState.sae);
    if (info && info.direction && view.cur) { // the viewer holds the SAE's weights (live chat's --sae)
      const a = document.createElement("a");
      a.className = "feat-dir";
      a.href = `${sessionUrl(view.cur.summary)}/features/${encodeURIComponent(info.name)}/direction?feature=${f}&format=npy`;
      a.download = `${info.name}-feature${f}.npy`;
      a.textContent = "↓";
      a.title = `feature ${f}'s direction as a .npy (llmri capture --steer FILE.npy@LAYERS:SCALE)`;
      el.appendChild(a);
    }
    if (info && canSteerWith(info.name)) { // live chat records this SAE: steer the next answer with the feature
      const s = document.createElement("button");
      s.className = "feat-steer";
      s.dataset.f = String(f);
      s.textContent = "steer";
      s.title = `steer live chat with feature ${f}'s decoder row (the steering panel, at the SAE's layer)`;
      s.onclick = (e) => { e.stopPropagation(); steerWithFeature(info.name, f, info.layer); };
      el.appendChild(s);
    }
  }
}

/** Pin feature f to the strip, or unpin it. @param {number} f */
export function togglePin(f) {
  const i = featureState.pinned.indexOf(f);
  if (i >= 0) featureState.pinned.splice(i, 1);
  else featureState.pinned.push(f);
  drawPins();
  if (featureState.shownT >= 0) show(view.t);
  reloadStrip();
}

let searchSeq = 0;
/** Features of the SAE shown whose id is q or whose label holds it. @param {string} q */
export async function search(q) {
  if (!view.cur || !featureState.sae) return [];
  const mine = ++searchSeq;
  const url = `${sessionUrl(view.cur.summary)}/features/${encodeURIComponent(featureState.sae)}/search?q=${encodeURIComponent(q)}&limit=20`;
  const doc = await getJSON(url);
  if (mine !== searchSeq) return featureState.matches;
  /** @type {Match[]} */
  const found = doc.matches;
  featureState.matches = found;
  const el = $("feat-matches");
  el.innerHTML = "";
  el.dataset.q = q;
  const top = Math.max(0, ...found.map((m) => m.max));
  for (const m of found) {
    featureState.labels.set(m.feature, m.label);
    const row = line(m.feature, m.max, top, ` <span class="dim">@${m.token}</span>`);
    row.classList.add("match");
    row.title = `feature ${m.feature}: among the top features at ${m.fires} tokens, largest ${fmt(m.max, 3)} at token ${m.token}; click to pin it and go there`;
    el.appendChild(row);
  }
  if (q && !found.length) el.innerHTML = `<span class="dim">no feature of this session matches</span>`;
  return found;
}

/** The SAE select and the panel, for the session just opened. */
async function open() {
  const cur = view.cur;
  const saes = cur ? (/** @type {any} */ (cur.meta).sae || {}).saes || [] : [];
  const panel = $("feat-panel");
  featureState.matches = [];
  featureState.labels = new Map();
  if (!cur || !saes.length) {
    featureState.key = null; featureState.saes = []; featureState.sae = null;
    panel.hidden = true;
    reloadStrip();
    return;
  }
  const key = cur.summary.key;
  const doc = await getJSON(`${sessionUrl(cur.summary)}/features`).catch(() => ({ saes: [] }));
  if (!view.cur || view.cur.summary.key !== key) return;
  const before = featureState.sae;
  featureState.key = key;
  featureState.saes = doc.saes;
  featureState.sae = doc.saes.some((/** @type {SaeInfo} */ s) => s.name === before) ? before : (doc.saes[0] ? doc.saes[0].name : null);
  if (featureState.sae !== before) featureState.pinned = []; // the pins are of that SAE's features
  panel.hidden = !featureState.sae;
  if (featureState.sae && $("rside").hidden) { // the readouts column, also where a session has SAEs and no lens
    $("rside").hidden = false;
    $("layout").classList.add("with-readouts");
    window.dispatchEvent(new Event("resize")); // the tiles and strips laid out again beside it (main.js)
  }
  const sel = $("feat-sae", HTMLSelectElement);
  sel.innerHTML = doc.saes.map((/** @type {SaeInfo} */ s) => `<option value="${esc(s.name)}">${esc(s.name)} (${s.signal ?? "?"} ${s.layer ?? "?"})</option>`).join("");
  sel.value = featureState.sae || "";
  sel.hidden = doc.saes.length < 2;
  $("feat-search", HTMLInputElement).value = "";
  $("feat-matches").innerHTML = "";
  drawPins();
  reloadStrip();
  show(view.t);
}

let timer = 0;
/** @param {(t: number) => void} seek @param {() => void} stop */
export function wireFeatures(seek, stop) {
  buildPanel();
  wireStrip((t) => { stop(); seek(t); });
  const sel = $("feat-sae", HTMLSelectElement);
  sel.onchange = () => { featureState.sae = sel.value; featureState.pinned = []; featureState.labels = new Map(); drawPins(); reloadStrip(); show(view.t); };
  const input = $("feat-search", HTMLInputElement);
  input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => search(input.value.trim()).catch(() => {}), 200); });
  $("feat-list").addEventListener("click", (e) => {
    const row = e.target instanceof Element ? e.target.closest(".feat-row") : null;
    if (row instanceof HTMLElement && row.dataset.f) togglePin(Number(row.dataset.f));
  });
  $("feat-matches").addEventListener("click", (e) => {
    const row = e.target instanceof Element ? e.target.closest(".feat-row") : null;
    if (!(row instanceof HTMLElement) || !row.dataset.f) return;
    const f = Number(row.dataset.f);
    if (!featureState.pinned.includes(f)) togglePin(f);
    const m = featureState.matches.find((x) => x.feature === f);
    if (m) { stop(); seek(m.token); }
  });
  $("feat-pins").addEventListener("click", (e) => {
    const b = e.target instanceof HTMLElement ? e.target.closest(".feat-pin") : null;
    if (b instanceof HTMLElement && b.dataset.f) togglePin(Number(b.dataset.f));
  });
}

on("open", () => { open().catch(() => {}); });
on("seek", (t) => show(t));
on("readouts", (key, t) => { if (view.cur && view.cur.summary.key === key && view.t === t) show(t); });
