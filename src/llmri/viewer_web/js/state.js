// The page's state, in one place: what the viewer shows (S), what the live chat is doing (chat), and the few
// events the panels use to follow each other without importing each other.

export const S = {
  sessions: [], // summaries from /api/sessions
  stores: [],
  luts: {}, // colour map name -> Uint8Array [256*3]
  cur: null, // the session shown: {summary, meta, grid}
  src: null, // its FrameSource
  loaded: null, // its key, once fully open (tokens, layout, stats, first frame requested)
  openSeq: 0, // bumped per openSession, so a slower earlier open gives way
  ws: null, // the replay's /live socket while the session shown is being recorded
  tokens: [],
  stats: {}, // signal -> {norm, sp, n, spMin, spMax}
  scales: {}, // signal -> Float32Array[layers] (per-layer)
  globalScale: {},
  t: 0, // the playhead
  lastDir: 1, // the way it last moved, for prefetching
  playing: false,
  mode: "all", // "all" | "composite" | a signal
  cmap: "grayscale",
  norm: "layer",
  window: 1,
  level: 0.5,
  sparsity: false,
  diff: "off", // "off" | "prev" | "session"
  diffSrc: null,
  diffSummary: null,
  drawn: -1, // the frame on the canvas (-1: stale)
  drawCount: 0,
  lastDrawMs: 0,
  waiters: [], // [{t, resolve}] for whenDrawn
  hover: null, // the pixel under the mouse: {grid, layer, x, y}
  curSpan: null, // the highlighted token in the strip
};

/** A short random id (a live chat's conversation). */
export function newId() {
  const a = new Uint8Array(6);
  crypto.getRandomValues(a);
  return Array.from(a, (x) => x.toString(16).padStart(2, "0")).join("");
}

/** The live chat panel's state (live*.js); tests and benchmarks read it as window.llmri.live. */
export const chat = {
  ws: null,
  hello: null,
  me: 0,
  conv: [], // [{role, content}] of this page's conversation
  conversation: newId(),
  turn: 0,
  shownKey: null, // the session whose conversation the panel shows
  run: null, // {key, mine, bubble, specials, answer: Map(index -> text), n, t0, first, signals, error}
  opened: false, // the running session is open in the viewer (frames can be applied)
  queue: [], // live messages waiting for the session to open
  buf: new Map(), // token index -> token record, waiting to be appended in order
  filling: false,
  follow: true,
  pendingSend: null, // the user message sent, until the server answers started / busy / error
  retry: 0,
  arrivals: [], // latency records for benchmarks: {start, stop, t_model, t_arrive, t_shown}
};

// ---------------------------------------------------------------------------------------------
// events: "seek" (t), "drawn" (t), "grow" (n, before), "open" (S.cur: a session opened, before its first seek),
// "readouts" (session key, t: the live chat's readouts of token t arrived), "resize" (the page was laid out again)
const listeners = new Map();

export function on(name, fn) {
  if (!listeners.has(name)) listeners.set(name, []);
  listeners.get(name).push(fn);
}

export function emit(name, ...args) {
  for (const fn of listeners.get(name) || []) fn(...args);
}

/** The session shown now has n frames (a replay's progress message, live chat's frames, a gap filled over
 * REST): the one place its total moves. Returns the total before, so callers can tell if the playhead was at
 * the end; "grow" tells the timeline, the stats and the first-frame layout. */
export function grow(n) {
  return S.src.grow(n); // its ongrow (session.js) emits "grow"
}

// ---------------------------------------------------------------------------------------------
// frames drawn, and the page being ready: promises for tests, benchmarks and the live chat

/** Resolves when frame t has been drawn. */
export function whenDrawn(t) {
  return S.drawn === t ? Promise.resolve(t) : new Promise((resolve) => S.waiters.push({ t, resolve }));
}

/** Frame t is on the canvas now: say so once to whoever waits for it. */
export function drawnNow(t) {
  S.drawn = t;
  S.drawCount++;
  const ready = S.waiters.filter((w) => w.t === t);
  S.waiters = S.waiters.filter((w) => w.t !== t);
  for (const w of ready) w.resolve(t);
  emit("drawn", t);
}

let markReady;
/** Resolves once main.js has opened the first session (or found none). */
export const ready = new Promise((resolve) => { markReady = resolve; });
export const setReady = () => markReady();
