// @ts-check
// Talking to the viewer server: JSON endpoints, the binary array format (see llmri/viewer/encoding.py),
// and a frame cache that fetches ranges ahead of the playhead.

const HALF = (() => {
  // float16 bit pattern -> float32 value, for all 65536 patterns (faster than decoding bit by bit).
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const s = h >> 15, e = (h >> 10) & 31, f = h & 1023;
    let v;
    if (e === 0) v = f * 2 ** -24;
    else if (e === 31) v = f ? NaN : Infinity;
    else v = (1 + f / 1024) * 2 ** (e - 15);
    t[h] = s ? -v : v;
  }
  return t;
})();

export class ApiError extends Error {
  /** @param {number} status @param {string} message */
  constructor(status, message) { super(message); this.status = status; }
}

/** @param {Response} res */
async function check(res) {
  if (res.ok) return res;
  let msg = `${res.status} ${res.statusText}`;
  try { msg = (await res.json()).error || msg; } catch { /* not JSON */ }
  throw new ApiError(res.status, msg);
}

/** fetch, or the page's transport where one is installed (the notebook widget answers in its kernel, over the
 * notebook's comm: llmri/notebook/widget.js); both take (url, init) and resolve to a Response. */
/** @type {(url: string, init?: RequestInit) => Promise<Response>} */
const request = (url, init) => (window.llmriTransport ? window.llmriTransport(url, init) : fetch(url, init));

/** A JSON endpoint's answer, as the server sends it (shapes: state.js's typedefs, llmri/viewer/routes).
 * @param {string} url @returns {Promise<any>} */
export async function getJSON(url) {
  return (await check(await request(url, { credentials: "same-origin" }))).json();
}

/**
 * The JSON header of a binary array message (llmri/viewer/encoding.py): its shape and dtype, and what it holds.
 * @typedef {object} ArrayHeader
 * @property {number[]} shape
 * @property {string} dtype "float16" | "float32" | "uint8"
 * @property {number} lo uint8: the value of 0
 * @property {number} hi uint8: the value of 255
 * @property {number} start
 * @property {number} stop
 * @property {number} total frames: the session's committed frames
 * @property {string} session the live chat's frames: its session
 * @property {string[]} signals the live chat's frames
 * @property {import("./state.js").Token[]} tokens the live chat's frames
 * @property {number} t_model the live chat's frames: when the model made them (s)
 * @property {number | null} [first_divergence] a comparison: the first position whose token differs
 */
/** @typedef {{start: number, stop: number, data: Float32Array}} Chunk */

/** Decode one binary array message. @param {ArrayBuffer} buf @returns {{header: ArrayHeader, data: Float32Array}} */
export function decodeArray(buf) {
  const dv = new DataView(buf);
  const magic = String.fromCharCode(dv.getUint8(0), dv.getUint8(1), dv.getUint8(2), dv.getUint8(3));
  if (magic !== "LMRI") throw new Error("not an llmri array message");
  const hlen = dv.getUint16(6, true);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 8, hlen)));
  const count = header.shape.reduce((/** @type {number} */ a, /** @type {number} */ b) => a * b, 1);
  const off = 8 + hlen;
  let data;
  if (header.dtype === "float16") {
    const raw = new Uint16Array(buf, off, count);
    data = new Float32Array(count);
    for (let i = 0; i < count; i++) data[i] = HALF[raw[i]];
  } else if (header.dtype === "bfloat16") { // the upper half of a float32 (zarr has no bfloat16)
    const raw = new Uint16Array(buf, off, count);
    const bits = new Uint32Array(count);
    for (let i = 0; i < count; i++) bits[i] = raw[i] << 16;
    data = new Float32Array(bits.buffer);
  } else if (header.dtype === "float32") {
    data = new Float32Array(buf, off, count);
  } else if (header.dtype === "uint8") {
    const raw = new Uint8Array(buf, off, count);
    const k = (header.hi - header.lo) / 255;
    data = new Float32Array(count);
    for (let i = 0; i < count; i++) data[i] = header.lo + raw[i] * k;
  } else {
    throw new Error(`unknown dtype ${header.dtype}`);
  }
  return { header, data };
}

/** POST `body` as JSON; the JSON answer. @param {string} url @param {unknown} body @returns {Promise<any>} */
export async function postJSON(url, body) {
  const init = { method: "POST", credentials: /** @type {RequestCredentials} */ ("same-origin"), headers: { "content-type": "application/json" }, body: JSON.stringify(body) };
  return (await check(await request(url, init))).json();
}

/** @param {string} url @param {RequestInit} [init] */
export async function getArray(url, init = {}) {
  const res = await check(await request(url, { credentials: "same-origin", ...init }));
  return decodeArray(await res.arrayBuffer());
}

/** @param {{store: string, id: string}} s */
export const sessionUrl = (s) => `/api/sessions/${encodeURIComponent(s.store)}/${encodeURIComponent(s.id)}`;

/** An LRU of frame chunks shared by every open session, bounded in bytes. */
class ChunkLRU {
  /** @param {number} maxBytes */
  constructor(maxBytes) {
    this.max = maxBytes;
    this.bytes = 0;
    /** @type {Map<string, Chunk>} */
    this.map = new Map();
  }
  /** @param {string} key */
  get(key) {
    const v = this.map.get(key);
    if (v) { this.map.delete(key); this.map.set(key, v); }
    return v;
  }
  /** @param {string} key @param {Chunk} v */
  set(key, v) {
    const old = this.map.get(key);
    if (old) { this.bytes -= old.data.byteLength; this.map.delete(key); }
    this.map.set(key, v);
    this.bytes += v.data.byteLength;
    for (const [k, c] of this.map) {
      if (this.bytes <= this.max) break;
      if (k === key) continue;
      this.map.delete(k);
      this.bytes -= c.data.byteLength;
    }
  }
  clear() { this.map.clear(); this.bytes = 0; }
}

export const LRU = new ChunkLRU(384 * 1024 * 1024);

/** Frames of one session, fetched in chunks of `chunk` frames per signal and cached. */
export class FrameSource {
  /** @param {import("./state.js").Summary} summary @param {import("./state.js").Meta} meta */
  constructor(summary, meta, chunk = 16) {
    this.s = summary;
    this.url = sessionUrl(summary);
    this.signals = meta.signals || [];
    this.layers = (meta.layers || []).length;
    const [h, w] = meta.tile || [0, 0];
    this.h = h;
    this.w = w;
    this.frameSize = this.layers * this.h * this.w;
    this.total = summary.n_frames;
    this.chunk = chunk;
    /** @type {Map<string, {ctl: AbortController, low: boolean, promise: Promise<unknown>}>} */
    this.pending = new Map();
    /** @type {((n: number, before: number) => void) | null} the total rose */
    this.ongrow = null;
  }
  /** There are n frames (a chunk's header, a recording's progress, the live chat's frames): the one place the
   * total moves, and only up. Returns the total before; `ongrow` hears of a rise. */
  /** @param {number} n */
  grow(n) {
    const before = this.total;
    if (!(n > before)) return before; // not more frames (or no number at all)
    this.total = n;
    if (this.ongrow) this.ongrow(n, before);
    return before;
  }
  /** @param {string} signal @param {number} c */
  key(signal, c) { return `${this.url}|${signal}|${c}`; }
  /** The values of frame t (Float32Array [layers*H*W]) or null if not cached. @param {string} signal @param {number} t */
  get(signal, t) {
    if (t < 0 || t >= this.total) return null;
    const c = Math.floor(t / this.chunk);
    const hit = LRU.get(this.key(signal, c));
    if (!hit || t >= hit.stop) return null;
    const o = (t - hit.start) * this.frameSize;
    return hit.data.subarray(o, o + this.frameSize);
  }
  /** @param {string} signal @param {number} t */
  has(signal, t) { return this.get(signal, t) !== null; }
  /** Fetch the chunk holding frame t for one signal (see ensureMany). @param {string} signal @param {number} t */
  ensure(signal, t, low = false) {
    return this.ensureMany([signal], t, low);
  }
  /** Fetch the chunk holding frame t for every signal in `signals` that lacks it: one request, several signals.
   * Resolves when all are cached. A demand fetch (low=false) first cancels speculative prefetches, so a jump
   * never queues behind them. @param {string[]} signals @param {number} t @returns {Promise<unknown>} */
  ensureMany(signals, t, low = false) {
    if (t < 0 || t >= this.total) return Promise.resolve();
    const c = Math.floor(t / this.chunk);
    /** @type {Promise<unknown>[]} */
    const waits = [];
    /** @type {string[]} */
    const want = [];
    for (const s of signals) {
      const key = this.key(s, c);
      const hit = LRU.get(key);
      if (hit && t < hit.stop) continue;
      const inflight = this.pending.get(key);
      if (inflight) {
        if (!low) inflight.low = false; // now wanted: never cancel it
        waits.push(inflight.promise);
      } else want.push(s);
    }
    if (want.length) {
      if (!low) {
        for (const [k, p] of this.pending) if (p.low) { p.ctl.abort(); this.pending.delete(k); }
      }
      const start = c * this.chunk, stop = start + this.chunk;
      const ctl = new AbortController();
      /** @type {RequestInit} */
      const init = { signal: ctl.signal, priority: low ? "low" : "high" };
      const keys = want.map((s) => this.key(s, c));
      const promise = getArray(`${this.url}/frames?signal=${want.join(",")}&start=${start}&stop=${stop}`, init)
        .then(({ header, data }) => {
          const n = header.stop - header.start;
          want.forEach((_, i) => {
            const part = want.length === 1 ? data : data.subarray(i * n * this.frameSize, (i + 1) * n * this.frameSize);
            LRU.set(keys[i], { start: header.start, stop: header.stop, data: part });
          });
          this.grow(header.total); // a recording's chunk may know of frames no progress message named yet
        })
        .finally(() => {
          for (const k of keys) if (this.pending.get(k) === entry) this.pending.delete(k);
        });
      const entry = { ctl, low, promise };
      for (const k of keys) this.pending.set(k, entry);
      waits.push(promise);
    }
    return waits.length === 1 ? waits[0] : Promise.all(waits);
  }
  /** Prefetch the chunks around frame t in direction dir (+1 / -1), `ahead` chunks deep. @param {string[]} signals @param {number} t */
  prefetch(signals, t, dir = 1, ahead = 2) {
    for (let k = 0; k <= ahead; k++) {
      // k = 0 covers the neighbour chunk when t sits at a chunk's edge
      const u = k === 0 ? t + dir * Math.ceil(this.chunk / 4) : t + dir * k * this.chunk;
      if (u >= 0 && u < this.total && this.pending.size < 12) this.ensureMany(signals, u, true).catch(() => {});
    }
  }
}
