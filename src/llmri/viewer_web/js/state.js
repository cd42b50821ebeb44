// @ts-check
// The page's state, declared in one place: what the viewer shows (`view`) and what the live chat is doing
// (`chat`), each field written by the one module named beside it (the others read it, or ask that module through
// the functions it exports); and the events the panels use to follow each other without importing each other.

/**
 * What the server says of a session (GET /api/sessions and /api/sessions/{store}/{id}).
 * @typedef {object} Summary
 * @property {string} key "store/id"
 * @property {string} store
 * @property {string} id
 * @property {string} [title]
 * @property {string} [model]
 * @property {string} [reducer]
 * @property {number} n_frames
 * @property {string} status "recording" | "complete" | "interrupted"
 * @property {boolean} [chat_only]
 * @property {string[]} [readouts] "lens", "attention"
 * @property {string} [created] ISO time
 * @property {string} [client] a served request's client (the OpenAI ``user`` field)
 * @property {string} [request_id] a served request's X-Request-Id
 * @property {boolean} [served] recorded by ``llmri serve``
 * @property {boolean} [study] a study prompt's session (capture_many)
 * @property {string} [prompt_id] the study prompt's id
 * @property {Record<string, string | number | boolean | null>} [metadata] the study prompt's free metadata
 * @property {string} [baseline] the id of the session it was run against (a re-run, steered or patched run)
 * @property {boolean} [patching] it holds a patching sweep (llmri.patching with store=)
 */
/**
 * A session's metadata, as recorded (only what the client reads).
 * @typedef {object} Meta
 * @property {string[]} [signals]
 * @property {string[]} [layers]
 * @property {[number, number]} [tile] [H, W]
 * @property {{kind?: string, n_values?: number}} [reducer]
 * @property {{name?: string, d_model?: number}} [model]
 * @property {string} [backend]
 * @property {string} [created]
 * @property {string} [stop_reason]
 * @property {number[]} [special_ids]
 * @property {Record<string, number[]>} [scales]
 * @property {{role: string, content: string}[]} [messages]
 * @property {boolean} [live]
 * @property {string} [frame_dtype] float16 | bfloat16 | float32 (docs/precision.md)
 * @property {{total?: number, per_layer?: Record<string, number[]>}} [overflow] values stored as ±inf
 * @property {boolean} [chat_only]
 * @property {string} [conversation]
 * @property {number} [turn]
 */
/**
 * The session shown.
 * @typedef {{summary: Summary, meta: Meta, grid: [number, number]}} Current
 */
/**
 * One position's token record (GET .../tokens, the live chat's frames).
 * @typedef {object} Token
 * @property {number} index
 * @property {number} id
 * @property {string} text
 * @property {string} role "prompt" | "generated"
 * @property {number | null} logprob
 * @property {number | null} entropy
 * @property {{id: number, text: string, prob: number}[]} [top]
 */
/** @typedef {{norm: Float32Array, sp: Float32Array, n: number, spMin: number, spMax: number}} Stats */
/** @typedef {{grid: number, layer: number, x: number, y: number}} Hover */
/** @typedef {{id: string, label: string, problems: string[]}} StoreInfo */
/** @typedef {import("./api.js").FrameSource} FrameSource */

export const view = {
  // session.js: the list, the session shown and its source of frames
  /** @type {Summary[]} */ sessions: [], // summaries from /api/sessions
  /** @type {StoreInfo[]} */ stores: [],
  /** @type {Summary[]} */ shown: [], // what the picker lists: the sessions matching `query` (all when it is "")
  query: "", // the search box's text (the server filters: /api/sessions?q=)
  /** @type {Current | null} */ cur: null, // the session shown (its summary's n_frames and status move with it)
  /** @type {FrameSource | null} */ src: null, // its frames
  /** @type {string | null} */ loaded: null, // its key, once fully open (tokens, layout, stats, first frame requested)
  openSeq: 0, // bumped per openSession, so a slower earlier open gives way
  /** @type {WebSocket | null} */ ws: null, // the replay's /live socket while the session shown is being recorded
  // timeline.js: the playhead and the tokens on the strip
  /** @type {Token[]} */ tokens: [],
  t: 0, // the playhead
  lastDir: 1, // the way it last moved, for prefetching
  playing: false,
  /** @type {HTMLElement | null} */ curSpan: null, // the highlighted token in the strip
  // tiles.js: colours, scales and what is on the canvas
  /** @type {Record<string, Uint8Array>} */ luts: {}, // colour map name -> [256*3]
  /** @type {Record<string, Stats>} */ stats: {},
  /** @type {Record<string, Float32Array>} */ scales: {}, // signal -> [layers] (per-layer)
  /** @type {Record<string, Float32Array>} */ globalScale: {},
  mode: "all", // "all" | "composite" | a signal
  cmap: "grayscale",
  norm: "layer",
  window: 1,
  level: 0.5,
  sparsity: false,
  drawn: -1, // the frame on the canvas (-1: stale)
  drawCount: 0,
  lastDrawMs: 0,
  /** @type {{t: number, resolve: (t: number) => void}[]} */ waiters: [], // for whenDrawn
  // compare.js: what is subtracted
  diff: "off", // "off" | "prev" | "session"
  /** @type {FrameSource | null} */ diffSrc: null,
  /** @type {Summary | null} */ diffSummary: null,
  // inspector.js: the pixel under the mouse
  /** @type {Hover | null} */ hover: null,
};

/** A short random id (a live chat's conversation). */
export function newId() {
  const a = new Uint8Array(6);
  crypto.getRandomValues(a);
  return Array.from(a, (x) => x.toString(16).padStart(2, "0")).join("");
}

/**
 * A live answer being streamed: live.js starts and ends it; liveframes.js records what its frames bring.
 * @typedef {object} Run
 * @property {string} key the session
 * @property {boolean} mine this page asked for it
 * @property {HTMLElement} bubble
 * @property {Set<number>} specials
 * @property {Map<number, string>} answer token index -> text (liveframes.js)
 * @property {number} n frames seen (liveframes.js)
 * @property {number} t0
 * @property {number} first when its first generated token came (liveframes.js)
 * @property {string[]} signals
 * @property {string | null} error
 * @property {boolean} [rerun] a steered re-run of another answer (beside it; the conversation does not take it)
 */
/** @typedef {{start: number, stop: number, t_model: number, t_arrive: number, t_shown: number}} Arrival */
/**
 * The live socket's hello (llmri/viewer/live): this page's number, what the server runs, the answer running.
 * @typedef {object} Hello
 * @property {number} you
 * @property {string} mode "model" | "chat-only"
 * @property {string} [model]
 * @property {string} [url] chat-only: the OpenAI-compatible server
 * @property {string} [backend]
 * @property {number} [n_layers]
 * @property {string[]} [signals]
 * @property {{session: string, messages: {role: string, content: string}[]} | null} [running]
 * @property {{max_new_tokens: number, temperature: number, top_p: number, seed: number}} [defaults] a turn's
 *   settings where the page sends none (the settings table's conversation defaults)
 * @property {boolean} [steerable] the model's backend applies steering (livesteer.js)
 * @property {string[]} [directions] the saved directions it offers (llmri view --direction FILE)
 * @property {number} [d_model] the model's width
 * @property {string[]} [saes] the SAEs each turn records (llmri view --sae PATH): their features steer too
 */
/** @typedef {{header: import("./api.js").ArrayHeader, data: Float32Array, rec: Arrival}} Queued */

/** The live chat panel's state (live*.js); tests and benchmarks read it as window.llmri.live. */
export const chat = {
  // live.js: the socket, the run and the conversation
  /** @type {WebSocket | null} */ ws: null,
  /** @type {Hello | null} */ hello: null,
  me: 0,
  retry: 0,
  /** @type {{role: string, content: string}[]} */ conv: [], // this page's conversation
  conversation: newId(),
  turn: 0,
  /** @type {string | null} */ shownKey: null, // the session whose conversation the panel shows
  /** @type {Run | null} */ run: null,
  /** @type {{text: string, bubble: HTMLElement, pairWith?: HTMLElement} | null} */ pendingSend: null, // until the server answers started / busy / error (pairWith: the answer a re-run goes beside)
  // liveframes.js: frames and tokens on their way into the viewer
  opened: false, // the running session is open in the viewer (frames can be applied)
  /** @type {Queued[]} */ queue: [], // live messages waiting for the session to open
  /** @type {Map<number, Token>} */ buf: new Map(), // token index -> token record, waiting to be appended in order
  filling: false,
  /** @type {Arrival[]} */ arrivals: [], // latency records for benchmarks
  // livepanel.js: the "follow newest token" box (timeline.js follows a growing session while it is ticked)
  follow: true,
};

// ---------------------------------------------------------------------------------------------
/**
 * The page's events, each with what it passes: `on` and `emit` take no other name (EVENTS, checked).
 * @typedef {object} Events
 * @property {[t: number]} seek the playhead moved to token t (its frame may not be drawn yet)
 * @property {[t: number]} drawn frame t is on the canvas
 * @property {[n: number, before: number]} grow the session shown has n frames now, `before` before
 * @property {[cur: Current]} open a session opened, before its first seek
 * @property {[cur: Current]} status the session shown changed status (cur.summary.status)
 * @property {[key: string, t: number]} readouts the live chat's readouts of token t of session `key` arrived
 * @property {[]} resize the page was laid out again
 */
/** @type {(keyof Events)[]} */
export const EVENTS = ["seek", "drawn", "grow", "open", "status", "readouts", "resize"];

/** @type {Map<keyof Events, ((...args: any[]) => void)[]>} */
const listeners = new Map(EVENTS.map((name) => [name, []]));

/** @param {string} name */
function listenersOf(name) {
  const list = listeners.get(/** @type {keyof Events} */ (name));
  if (!list) throw new Error(`no such event: ${name}`);
  return list;
}

/**
 * @template {keyof Events} K
 * @param {K} name
 * @param {(...args: Events[K]) => void} fn
 */
export function on(name, fn) {
  listenersOf(name).push(fn);
}

/**
 * @template {keyof Events} K
 * @param {K} name
 * @param {Events[K]} args
 */
export function emit(name, ...args) {
  for (const fn of listenersOf(name)) fn(...args);
}

// ---------------------------------------------------------------------------------------------
/** @type {() => void} */
let markReady = () => {};
/** Resolves once main.js has opened the first session (or found none). */
export const ready = new Promise((resolve) => { markReady = () => resolve(undefined); });
export const setReady = () => markReady();
