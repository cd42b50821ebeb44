// A session's readouts, fetched and cached: the logit lens and attention per head of each position (the REST
// routes /lens and /attention, or the live chat's "readouts" messages), the lens strip and the markers.
// Rows are plain JSON as the server gives them; every value is the session's own.
import { getArray, getJSON, sessionUrl } from "./api.js";
import { view } from "./state.js";

const LENS_CHUNK = 32; // positions per /lens request
const ATTN_CHUNK = 4; // positions per /attention request (a row is L*H*k pairs)
const KEPT = 6; // sessions whose rows stay cached

const caches = new Map(); // session key -> {lens: Map(t -> row), attn: Map(t -> row), pending: Map(url -> promise)}

function cacheOf(key) {
  let c = caches.get(key);
  if (!c) {
    c = { lens: new Map(), attn: new Map(), pending: new Map() };
    caches.set(key, c);
    while (caches.size > KEPT) caches.delete(caches.keys().next().value);
  }
  return c;
}

/** Whether the session shown holds readout `kind` ("lens" or "attention"). */
export function has(kind) {
  return !!(view.cur && (view.cur.summary.readouts || []).includes(kind));
}

/** The rows of a range response, one object per position: {t, field: value of that position, ...}. */
function split(doc, fields, extra = {}) {
  const out = [];
  for (let i = 0; i < doc.stop - doc.start; i++) {
    const row = { t: doc.start + i };
    for (const f of fields) if (doc[f] !== undefined && doc[f] !== null) row[f] = doc[f][i];
    for (const [k, v] of Object.entries(extra)) row[k] = v[i];
    out.push(row);
  }
  return out;
}

const LENS_FIELDS = ["top_ids", "top_probs", "top_text", "next_prob", "next_rank", "entropy", "next_id", "decision"];
const ATTN_FIELDS = ["top_pos", "top_weight", "entropy", "sink"];

async function fetchRows(key, kind, t, chunk) {
  const c = cacheOf(key);
  const start = Math.floor(t / chunk) * chunk;
  const summary = view.sessions.find((s) => s.key === key) || (view.cur && view.cur.summary.key === key ? view.cur.summary : null);
  if (!summary) return;
  const url = `${sessionUrl(summary)}/${kind}?start=${start}&stop=${start + chunk}`;
  let p = c.pending.get(url);
  if (!p) {
    p = getJSON(url).then((doc) => {
      const rows = split(doc, kind === "lens" ? LENS_FIELDS : ATTN_FIELDS);
      const map = kind === "lens" ? c.lens : c.attn;
      for (const r of rows) map.set(r.t, r);
    }).finally(() => c.pending.delete(url));
    c.pending.set(url, p);
  }
  await p;
}

/** The lens row of position t of the session shown (null where it has none, or t is not committed yet). */
export async function lensRow(t) {
  if (!has("lens")) return null;
  const key = view.cur.summary.key;
  const c = cacheOf(key);
  if (!c.lens.has(t)) await fetchRows(key, "lens", t, LENS_CHUNK);
  return c.lens.get(t) || null;
}

/** The attention row of position t of the session shown (null where it has none). */
export async function attentionRow(t) {
  if (!has("attention")) return null;
  const key = view.cur.summary.key;
  const c = cacheOf(key);
  if (!c.attn.has(t)) await fetchRows(key, "attention", t, ATTN_CHUNK);
  return c.attn.get(t) || null;
}

/** A cached row, without fetching (the live chat's newest token, drawn at once). */
export function cachedRow(kind, t) {
  if (!view.cur) return null;
  const c = caches.get(view.cur.summary.key);
  return (c && (kind === "lens" ? c.lens : c.attn).get(t)) || null;
}

/** The live chat's readouts message: rows of session m.session, in the cache before their frames arrive. The
 * lens rows' next token comes from the token records of the frames (or the next message). */
export function putLive(m) {
  const c = cacheOf(m.session);
  if (m.lens) {
    const doc = { start: m.start, stop: m.stop, ...m.lens };
    for (const r of split(doc, LENS_FIELDS)) {
      r.decision = decisionLayer(r.top_ids);
      c.lens.set(r.t, r);
    }
  }
  if (m.attention) c.attn.set(m.attention.index, { t: m.attention.index, ...m.attention });
}

/** The first layer from which the top-1 id equals the last layer's and stays equal (markers.decision_layers). */
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
  if (!has("lens")) return null;
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

/** The markers of the session shown (sorted by token). */
export async function markerList() {
  if (!view.cur) return [];
  return (await getJSON(`${sessionUrl(view.cur.summary)}/markers`)).markers;
}
