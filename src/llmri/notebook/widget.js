// @ts-check
// llmri's notebook widget (an anywidget ESM): `llmri view`'s own page and modules (viewer_web), unchanged, in a
// same-origin iframe per output, their requests answered by the kernel over the widget's comm
// (llmri/notebook/widget.py -> the viewer's ASGI app, in-process): no server, no port.
//
// The iframe gets: the page's body from GET / (stylesheets inlined, images as data: URLs, scripts removed); the
// viewer's ES modules as blob: URLs behind an import map (their "./x.js" specifiers rewritten to bare names, so
// cycles and any new module just work); `window.llmriTransport` (fetch-shaped, used by api.js) and a WebSocket
// class whose sockets are carried over the same comm (a recording session's /live progress).

const BARE = "llmri"; // "/static/js/x.js" is imported as "llmri/static/js/x.js"
const IMPORTS = /(\bfrom\s*|\bimport\s*\(?\s*)(["'])((?:\.{1,2})?\/[^"'\s]+)\2/g;

/**
 * The widget's model as anywidget gives it (only what this module uses).
 * @typedef {object} AnyModel
 * @property {(name: string) => any} get
 * @property {(name: string, value: unknown) => void} set
 * @property {() => void} save_changes
 * @property {(event: string, fn: (...args: any[]) => void) => void} on
 * @property {(event: string, fn: (...args: any[]) => void) => void} off
 * @property {(msg: object) => void} send
 */
/** The iframe's window: its own realm, with its own Promise, Response, Event... @typedef {Window & typeof globalThis} Realm */
/** A comm buffer (anywidget hands over DataViews or ArrayBuffers). @typedef {ArrayBuffer | ArrayBufferView | null | undefined} Buffer */
/** @typedef {{status: number, type: string, body: Buffer}} Reply */
/** @typedef {ReturnType<typeof channel>} Channel */
/** @typedef {{op: string, id: string, status?: number, type?: string, event?: string, data?: string, code?: number, reason?: string}} CommMsg */

/** @param {Buffer} b */
const bytesOf = (b) => (!b ? new Uint8Array(0) : b instanceof ArrayBuffer ? new Uint8Array(b) : new Uint8Array(b.buffer, b.byteOffset, b.byteLength));
/** @param {Buffer} b */
const textOf = (b) => new TextDecoder().decode(bytesOf(b));

/** Requests and sockets over the widget's comm; ids carry this view's tag (a model may have several views).
 * @param {AnyModel} model */
function channel(model) {
  const tag = Math.random().toString(36).slice(2, 10);
  let next = 0;
  /** @type {Map<string, (r: Reply) => void>} */
  const waiting = new Map();
  /** @type {Map<string, {event(msg: CommMsg, buffers: Buffer[] | undefined): void}>} */
  const sockets = new Map();
  /** @param {CommMsg} msg @param {Buffer[]} [buffers] */
  const onMsg = (msg, buffers) => {
    if (!msg || typeof msg.id !== "string" || !msg.id.startsWith(tag)) return;
    if (msg.op === "reply") {
      const w = waiting.get(msg.id);
      waiting.delete(msg.id);
      if (w) w({ status: msg.status || 0, type: msg.type || "", body: buffers && buffers[0] });
    } else if (msg.op === "ws") {
      const s = sockets.get(msg.id);
      if (msg.event === "close") sockets.delete(msg.id);
      if (s) s.event(msg, buffers);
    }
  };
  model.on("msg:custom", onMsg);
  return {
    /** @param {string} url @returns {Promise<Reply>} */
    get(url) {
      const id = `${tag}:${next++}`;
      return new Promise((resolve) => { waiting.set(id, resolve); model.send({ op: "get", id, url }); });
    },
    /** @param {string} url */
    async text(url) {
      const r = await this.get(url);
      if (r.status !== 200) throw new Error(`${url}: ${r.status} ${textOf(r.body).slice(0, 200)}`);
      return textOf(r.body);
    },
    /** @param {{event(msg: CommMsg, buffers: Buffer[] | undefined): void}} sock @param {string} url */
    open(sock, url) {
      const id = `${tag}:${next++}`;
      sockets.set(id, sock);
      model.send({ op: "ws-open", id, url });
      return id;
    },
    wsSend: (/** @type {string} */ id, /** @type {string} */ data) => model.send({ op: "ws-send", id, data }),
    wsClose: (/** @type {string} */ id, /** @type {number} */ code) => { sockets.delete(id); model.send({ op: "ws-close", id, code }); },
    close: () => {
      model.off("msg:custom", onMsg);
      for (const id of sockets.keys()) try { model.send({ op: "ws-close", id, code: 1001 }); } catch { /* model gone */ }
      waiting.clear();
      sockets.clear();
    },
  };
}

/** fetch(url, init) for the iframe's api.js: a Response of the iframe's own realm; init.signal aborts.
 * @param {Realm} win @param {Channel} chan @returns {(url: string, init?: RequestInit) => Promise<Response>} */
function transport(win, chan) {
  return (url, init = {}) => new win.Promise((resolve, reject) => {
    const sig = init.signal;
    const abort = () => reject(new win.DOMException("The request was aborted.", "AbortError"));
    if (sig && sig.aborted) { abort(); return; }
    if (sig) sig.addEventListener("abort", abort, { once: true });
    chan.get(String(url)).then((r) => {
      if (sig) sig.removeEventListener("abort", abort);
      const body = r.status === 204 || r.status === 304 ? null : bytesOf(r.body).slice();
      resolve(new win.Response(body, { status: r.status, headers: { "content-type": r.type } }));
    }, reject);
  });
}

/** A WebSocket class for the iframe: the app's WebSocket routes, reached over the comm.
 * @param {Realm} win @param {Channel} chan */
function socketClass(win, chan) {
  return class LlmriSocket extends win.EventTarget {
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSING = 2;
    static CLOSED = 3;
    /** @param {string | URL} url */
    constructor(url) {
      super();
      this.url = String(url);
      this.readyState = 0;
      this.binaryType = "blob";
      /** @type {((ev: Event) => void) | null} */
      this.onopen = null;
      /** @type {((ev: Event) => void) | null} */
      this.onmessage = null;
      /** @type {((ev: Event) => void) | null} */
      this.onclose = null;
      /** @type {((ev: Event) => void) | null} */
      this.onerror = null;
      this.id = chan.open(this, this.url.replace(/^wss?:\/\/[^/]*/, ""));
    }
    /** @param {unknown} data */
    send(data) {
      if (this.readyState !== 1) throw new win.DOMException("WebSocket is not open", "InvalidStateError");
      chan.wsSend(this.id, String(data));
    }
    close(code = 1000) {
      if (this.readyState >= 2) return;
      this.readyState = 2;
      chan.wsClose(this.id, code);
      win.setTimeout(() => this.fire("close", { code, reason: "", wasClean: true }), 0);
    }
    /** @param {"open" | "message" | "close" | "error"} type @param {object} props */
    fire(type, props) {
      if (type === "close") this.readyState = 3;
      const ev = new win.Event(type);
      for (const [k, v] of Object.entries(props)) Object.defineProperty(ev, k, { value: v });
      this.dispatchEvent(ev);
      const h = { open: this.onopen, message: this.onmessage, close: this.onclose, error: this.onerror }[type];
      if (typeof h === "function") h.call(this, ev);
    }
    /** @param {CommMsg} msg @param {Buffer[] | undefined} buffers */
    event(msg, buffers) {
      if (this.readyState === 3) return;
      if (msg.event === "open") { this.readyState = 1; this.fire("open", {}); }
      else if (msg.event === "text") this.fire("message", { data: msg.data });
      else if (msg.event === "bytes") {
        const b = bytesOf(buffers && buffers[0]).slice();
        this.fire("message", { data: this.binaryType === "arraybuffer" ? b.buffer : new win.Blob([b]) });
      } else if (msg.event === "close") {
        if (msg.code !== 1000) this.fire("error", {});
        this.fire("close", { code: msg.code, reason: msg.reason || "", wasClean: msg.code === 1000 });
      }
    }
  };
}

/** The page (GET /) made self-contained, and the module URLs it starts from. @param {Channel} chan */
async function page(chan) {
  const doc = new DOMParser().parseFromString(await chan.text("/"), "text/html");
  const entries = [...doc.querySelectorAll("script[type=module][src]")].map((s) => s.getAttribute("src") || "");
  doc.querySelectorAll("script, link[rel~=icon]").forEach((s) => s.remove());
  for (const link of doc.querySelectorAll("link[rel=stylesheet][href]")) {
    const style = doc.createElement("style");
    style.textContent = await chan.text(link.getAttribute("href") || "");
    link.replaceWith(style);
  }
  for (const img of doc.querySelectorAll("img[src^='/']")) {
    if (!(img instanceof HTMLImageElement)) continue;
    const r = await chan.get(img.getAttribute("src") || "");
    const b = bytesOf(r.body);
    let bin = "";
    for (let i = 0; i < b.length; i++) bin += String.fromCharCode(b[i]);
    img.src = `data:${(r.type || "application/octet-stream").split(";")[0]};base64,${btoa(bin)}`;
  }
  return { html: `<!doctype html>\n${doc.documentElement.outerHTML}`, entries };
}

/** Every module reachable from `entries`, each as a blob: URL of its source with its imports made bare.
 * @param {Channel} chan @param {string[]} entries */
async function modules(chan, entries) {
  /** @type {Map<string, string>} */
  const src = new Map();
  /** @param {string} path @returns {Promise<void>} */
  const load = async (path) => {
    if (src.has(path)) return;
    src.set(path, "");
    /** @type {string[]} */
    const deps = [];
    const code = (await chan.text(path)).replace(IMPORTS, (/** @type {string} */ _m, /** @type {string} */ pre, /** @type {string} */ q, /** @type {string} */ spec) => {
      const abs = new URL(spec, `http://x${path}`).pathname;
      deps.push(abs);
      return `${pre}${q}${BARE}${abs}${q}`;
    });
    src.set(path, code);
    await Promise.all(deps.map(load));
  };
  await Promise.all(entries.map(load));
  const blob = (/** @type {string} */ code) => URL.createObjectURL(new Blob([code], { type: "text/javascript" }));
  /** @type {Record<string, string>} */
  const imports = {};
  for (const [path, code] of src) imports[`${BARE}${path}`] = blob(code);
  // the bootstrap: tell the widget which frame is drawn (its `t`) and when the page is ready. (A recording's
  // playhead on its newest frame follows it in the viewer itself: timeline.js, on "grow".)
  const state = `${BARE}/static/js/state.js`;
  const hook = imports[state]
    ? `import { on, ready } from "${state}";
const host = window.llmriHost;
on("drawn", (t) => host.drawn(t));
ready.then(() => host.ready(window.llmri));
`
    : "window.llmriHost.ready(window.llmri);\n";
  const boot = blob(entries.map((e) => `import "${BARE}${e}";\n`).join("") + hook);
  return { imports, boot };
}

/** anywidget's render: the viewer in `el`, for `model`; returns the clean-up. @param {{model: AnyModel, el: HTMLElement}} view */
function render({ model, el }) {
  const chan = channel(model);
  const root = document.createElement("div");
  root.className = "llmri-widget";
  const line = document.createElement("div");
  line.style.cssText = "font: 12px/1.5 monospace; color: #b3261e; padding: 2px 4px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis;";
  const frame = document.createElement("iframe");
  frame.title = "llmri viewer";
  frame.style.cssText = "width: 100%; border: 0; display: block; background: #0f1115;";
  root.append(line, frame);
  el.appendChild(root);
  const showError = () => { line.textContent = model.get("error") || ""; line.hidden = !line.textContent; };
  const setHeight = () => { frame.style.height = `${model.get("height")}px`; };
  showError();
  setHeight();
  /** @type {LlmriHandle | null} the iframe's window.llmri once ready */
  let viewer = null;
  /** @type {string[]} */
  let urls = [];
  /** @type {ReturnType<typeof setTimeout> | 0} */
  let timer = 0;
  let reporting = false;
  const report = () => {
    // the frame on the canvas now, if it is the one the playhead wants (not a late draw of an older one)
    timer = 0;
    if (!viewer || !viewer.state.cur || viewer.state.drawn !== viewer.state.t) return;
    const t = viewer.state.t;
    const key = viewer.state.cur.summary.key;
    if (t === model.get("t") && key === model.get("session")) return;
    reporting = true;
    try {
      model.set("t", t);
      model.set("session", key);
      model.save_changes();
    } finally {
      reporting = false;
    }
  };
  /** @type {LlmriHost} */
  const host = {
    drawn() { if (!timer) timer = setTimeout(report, 120); },
    async ready(handle) {
      viewer = handle;
      const key = model.get("session");
      const cur = handle.state.cur ? handle.state.cur.summary.key : "";
      if (key && key !== cur) await handle.openSession(key, model.get("t"));
      else if (model.get("t")) handle.seek(model.get("t"));
    },
  };
  /** @param {{imports: Record<string, string>, boot: string}} assets */
  const boot = (assets) => {
    // every load of the frame (JupyterLab re-attaches outputs as the notebook scrolls) boots the page anew
    const win = /** @type {Realm | null} */ (frame.contentWindow);
    const doc = frame.contentDocument;
    if (!win || !doc || !doc.head) return;
    viewer = null;
    const replace = win.history.replaceState.bind(win.history); // the viewer keeps its place in the URL's hash:
    win.history.replaceState = (...a) => { try { replace(...a); } catch { /* about:srcdoc has none to change */ } };
    win.llmriTransport = transport(win, chan);
    // the part of WebSocket the viewer uses (readyState, binaryType, send, close, the on* handlers, events)
    win.WebSocket = /** @type {typeof WebSocket} */ (/** @type {unknown} */ (socketClass(win, chan)));
    win.llmriHost = host;
    const map = doc.createElement("script");
    map.type = "importmap";
    map.textContent = JSON.stringify({ imports: assets.imports });
    doc.head.appendChild(map);
    const s = doc.createElement("script");
    s.type = "module";
    s.src = assets.boot;
    doc.head.appendChild(s);
  };
  const onT = () => { const t = model.get("t"); if (!reporting && viewer && viewer.state.t !== t) viewer.seek(t); };
  const onSession = () => {
    const key = model.get("session");
    if (reporting) return;
    if (viewer && key && (!viewer.state.cur || viewer.state.cur.summary.key !== key)) viewer.openSession(key, model.get("t"));
  };
  model.on("change:error", showError);
  model.on("change:height", setHeight);
  model.on("change:t", onT);
  model.on("change:session", onSession);
  (async () => {
    const { html, entries } = await page(chan);
    const assets = await modules(chan, entries);
    urls = [...Object.values(assets.imports), assets.boot];
    frame.addEventListener("load", () => boot(assets));
    frame.srcdoc = html;
  })().catch((e) => { line.textContent = `llmri: the viewer could not start: ${e.message}`; line.hidden = false; });
  return () => {
    model.off("change:error", showError);
    model.off("change:height", setHeight);
    model.off("change:t", onT);
    model.off("change:session", onSession);
    clearTimeout(timer);
    chan.close();
    for (const u of urls) URL.revokeObjectURL(u);
  };
}

export default { render };
