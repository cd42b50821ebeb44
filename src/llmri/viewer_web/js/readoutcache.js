// @ts-check
// A session's readouts, fetched and cached: the logit lens and attention per head of each position (the REST
// routes /lens and /attention, or the live chat's "readouts" messages), the lens strip and the markers.
// Rows are plain JSON as the server gives them; every value is the session's own.
import { getArray, getJSON, sessionUrl } from "./api.js";
import { view } from "./state.js";

/**
 * The logit lens of one position: per layer (rows, first layer first) its top tokens and what it gave the token
 * that came next.
 * @typedef {object} LensRow
 * @property {number} t
 * @property {number[][]} top_ids [layer][k] (-1: none)
 * @property {number[][]} top_probs
 * @property {string[][]} [top_text]
 * @property {(number | null)[]} [next_prob]
 * @property {number[]} [next_rank]
 * @property {number[]} [entropy]
 * @property {number | null} [next_id]
 * @property {number} [decision] the decision layer (-1: none)
 */
/**
 * Attention per head of one position: [layer][head] entropy and weight on position 0, and the top positions.
 * @typedef {object} AttentionRow
 * @property {number} t
 * @property {number[][][]} top_pos [layer][head][k] (-1: none)
 * @property {(number | null)[][][]} top_weight
 * @property {(number | null)[][]} entropy
 * @property {(number | null)[][]} sink
 */
/** @typedef {{t: number, [field: string]: unknown}} Row */
/** @typedef {{lens: Map<number, LensRow>, attn: Map<number, AttentionRow>, pending: Map<string, Promise<void>>}} Cache */
/** @typedef {{token: number, kind: string, reason: string}} Marker */

const LENS_CHUNK = 32; // positions per /lens request
const ATTN_CHUNK = 4; // positions per /attention request (a row is L*H*k pairs)
const KEPT = 6; // sessions whose rows stay cached

/** @type {Map<string, Cache>} session key -> its rows */
const caches = new Map();

/** @param {string} key */
function cacheOf(key) {
  let c = caches.get(key);
  if (!c) {
    c = { lens: new Map(), attn: new Map(), pending: new Map() };
    caches.set(key, c);
    for (const old of caches.keys()) {
      if (caches.size <= KEPT) break;
      caches.delete(old);
    }
  }
  return c;
}

/** Whether the session shown holds readout `kind` ("lens" or "attention"). @param {string} kind */
export function has(kind) {
  return !!(view.cur && (view.cur.summary.readouts || []).includes(kind));
}

/** The rows of a range response, one object per position: {t, field: value of that position, ...}.
 * @param {{start: number, stop: number, [field: string]: any}} doc @param {string[]} fields */
function split(doc, fields) {
  /** @type {Row[]} */
  const out = [];
  for (let i = 0; i < doc.stop - doc.start; i++) {
    /** @type {Row} */
    const row = { t: doc.start + i };
    for (const f of fields) if (doc[f] !== undefined && doc[f] !== null) row[f] = doc[f][i];
    out.push(row);
  }
  return out;
}

const LENS_FIELDS = ["top_ids", "top_probs", "top_text", "next_prob", "next_rank", "entropy", "next_id", "decision"];
const ATTN_FIELDS = ["top_pos", "top_weight", "entropy", "sink"];

/** @param {string} key @param {"lens" | "attention"} kind @param {number} t @param {number} chunk */
async function fetchRows(key, kind, t, chunk) {
  const c = cacheOf(key);
  const start = Math.floor(t / chunk) * chunk;
  const summary = view.sessions.find((s) => s.key === key) || (view.cur && view.cur.summary.key === key ? view.cur.summary : null);
  if (!summary) return;
  const url = `${sessionUrl(summary)}/${kind}?start=${start}&stop=${start + chunk}`;
  let p = c.pending.get(url);
  if (!p) {
    p = getJSON(url).then((doc) => {
      // the server's rows, as the typedefs above say (llmri/viewer/routes/readouts.py)
      if (kind === "lens") for (const r of split(doc, LENS_FIELDS)) c.lens.set(r.t, /** @type {LensRow} */ (r));
      else for (const r of split(doc, ATTN_FIELDS)) c.attn.set(r.t, /** @type {AttentionRow} */ (r));
    }).finally(() => c.pending.delete(url));
    c.pending.set(url, p);
  }
  await p;
}

/** The lens row of position t of the session shown (null where it has none, or t is not committed yet).
 * @param {number} t @returns {Promise<LensRow | null>} */
export async function lensRow(t) {
  if (!view.cur || !has("lens")) return null;
  const key = view.cur.summary.key;
  const c = cacheOf(key);
  if (!c.lens.has(t)) await fetchRows(key, "lens", t, LENS_CHUNK);
  return c.lens.get(t) || null;
}

/** The attention row of position t of the session shown (null where it has none).
 * @param {number} t @returns {Promise<AttentionRow | null>} */
export async function attentionRow(t) {
  if (!view.cur || !has("attention")) return null;
  const key = view.cur.summary.key;
  const c = cacheOf(key);
  if (!c.attn.has(t)) await fetchRows(key, "attention", t, ATTN_CHUNK);
  return c.attn.get(t) || null;
}

/** A cached lens row, without fetching (the live chat's newest token, drawn at once). @param {number} t */
export function cachedLens(t) {
  const c = view.cur && caches.get(view.cur.summary.key);
  return (c && c.lens.get(t)) || null;
}

/** A cached attention row, without fetching. @param {number} t */
export function cachedAttention(t) {
  const c = view.cur && caches.get(view.cur.summary.key);
  return (c && c.attn.get(t)) || null;
}

/** The live chat's readouts message: rows of session m.session, in the cache before their frames arrive. The
 * lens rows' next token comes from the token records of the frames (or the next message).
 * @param {{session: string, start: number, stop: number, lens?: object, attention?: Omit<AttentionRow, "t"> & {index: number}}} m */
export function putLive(m) {
  const c = cacheOf(m.session);
  if (m.lens) {
    const doc = { start: m.start, stop: m.stop, ...m.lens };
    for (const r of split(doc, LENS_FIELDS)) {
      const row = /** @type {LensRow} */ (r);
      row.decision = decisionLayer(row.top_ids);
      c.lens.set(row.t, row);
    }
  }
  if (m.attention) c.attn.set(m.attention.index, { t: m.attention.index, ...m.attention });
}

/** The first layer from which the top-1 id equals the last layer's and stays equal (markers.decision_layers). */
/** @param {number[][]} topIds */
export function decisionLayer(topIds) {
  const L = topIds.length;
  if (!L || topIds[L - 1][0] < 0) return -1;
  const last = topIds[L - 1][0];
  let d = L - 1;
  while (d > 0 && topIds[d - 1][0] === last) d--;
  return d;
}

/** The lens strip of the session shown, or null: {n, L, data: next_prob [n*L], decision: Int32Array [n]}. */
export async function lensStrip() {
  if (!view.cur || !has("lens")) return null;
  const { header, data } = await getArray(`${sessionUrl(view.cur.summary)}/lensstrip`);
  const [, n, L] = header.shape;
  const same = data.subarray(n * L); // 1 where a layer's top-1 is the last layer's
  const decision = new Int32Array(n).fill(-1);
  for (let t = 0; t < n; t++) {
    if (!(same[t * L + L - 1] === 1)) continue;
    let d = L - 1;
    while (d > 0 && same[t * L + d - 1] === 1) d--;
    decision[t] = d;
  }
  return { n, L, data: data.subarray(0, n * L), decision };
}

/** The markers of the session shown (sorted by token). @returns {Promise<Marker[]>} */
export async function markerList() {
  if (!view.cur) return [];
  return (await getJSON(`${sessionUrl(view.cur.summary)}/markers`)).markers;
}
