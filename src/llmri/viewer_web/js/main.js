// llmri viewer: pick a session, scrub its frames token by token, re-map colours, hover to read values, compare.
import { ApiError, FrameSource, LRU, getArray, getJSON, sessionUrl } from "./api.js";
import { Renderer, drawColorbar, mapValue, windowRange } from "./render.js";

const $ = (id) => document.getElementById(id);
const SIGNAL_TITLES = { resid: "residual stream", attn: "attention out", mlp: "MLP out" };

const S = {
  sessions: [],
  stores: [],
  luts: {},
  cur: null, // {summary, meta, grid}
  src: null, // FrameSource
  tokens: [],
  stats: {}, // signal -> {norm, sp, n, spMin, spMax}
  scales: {}, // signal -> Float32Array[layers] (per-layer)
  globalScale: {},
  t: 0,
  playing: false,
  mode: "all",
  cmap: "grayscale",
  norm: "layer",
  window: 1,
  level: 0.5,
  sparsity: false,
  diff: "off",
  diffSrc: null,
  diffSummary: null,
  drawn: -1,
  drawCount: 0,
  waiters: [],
  ws: null,
  hover: null,
  openSeq: 0,
};

const renderer = new Renderer($("view"), $("overlay"));
let scratch = {};

// ---------------------------------------------------------------------------------------------
// helpers
function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function showTok(s) {
  if (s === "") return "▫";
  return s.replace(/\n/g, "↵\n").replace(/\t/g, "→");
}
function oneLine(s) {
  return (s === "" ? "▫" : s).replace(/\n/g, "↵").replace(/\t/g, "→");
}
function fmt(v, d = 3) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
  return v.toFixed(d);
}
function banner(text, kind = "") {
  const b = $("banner");
  b.textContent = text;
  b.className = `banner ${kind}`;
  b.hidden = !text;
}
function segment(el, value, onchange) {
  for (const b of el.querySelectorAll("button")) {
    b.classList.toggle("on", b.dataset.v === value);
    b.onclick = () => onchange(b.dataset.v);
  }
}
function setSeg(el, value) {
  for (const b of el.querySelectorAll("button")) b.classList.toggle("on", b.dataset.v === value);
}
const isNeurons = () => S.cur && (S.cur.meta.reducer || {}).kind === "neurons";

// ---------------------------------------------------------------------------------------------
// session list
function sessionLabel(s) {
  const title = s.title ? s.title.replace(/\s+/g, " ").slice(0, 60) : "(no prompt)";
  const state = s.status === "complete" ? "" : ` · ${s.status}`;
  const kind = s.chat_only ? "chat-only" : `${s.reducer}`;
  return `${title} — ${s.model || "?"} · ${s.n_frames} tok · ${kind}${state}`;
}

function fillSelect(sel, sessions, current, exclude) {
  sel.innerHTML = "";
  const byStore = new Map();
  for (const s of sessions) {
    if (exclude && s.key === exclude) continue;
    if (!byStore.has(s.store)) byStore.set(s.store, []);
    byStore.get(s.store).push(s);
  }
  const labels = Object.fromEntries(S.stores.map((x) => [x.id, x.label]));
  for (const [store, list] of byStore) {
    const parent = byStore.size > 1 ? document.createElement("optgroup") : sel;
    if (parent !== sel) {
      parent.label = labels[store] || store;
      sel.appendChild(parent);
    }
    for (const s of list) {
      const o = document.createElement("option");
      o.value = s.key;
      o.textContent = sessionLabel(s);
      o.title = `${s.id}  (${labels[store] || store})`;
      parent.appendChild(o);
    }
  }
  if (current) sel.value = current;
}

async function refreshSessions() {
  let res;
  try {
    res = await getJSON("/api/sessions");
  } catch (e) {
    banner(`cannot list sessions: ${e.message}`, "error");
    return false;
  }
  const sig = (l) => l.map((s) => `${s.key}:${s.n_frames}:${s.status}`).join("|");
  const changed = sig(res.sessions) !== sig(S.sessions);
  S.sessions = res.sessions;
  S.stores = res.stores;
  if (changed) {
    fillSelect($("session-select"), S.sessions, S.cur && S.cur.summary.key);
    if (S.diff === "session") fillSelect($("diff-session"), S.sessions, S.diffSummary && S.diffSummary.key, S.cur && S.cur.summary.key);
  }
  const problems = res.stores.flatMap((s) => s.problems.map((p) => `${s.label}: ${p}`));
  if (problems.length && !$("banner").textContent) banner(`some sessions could not be read — ${problems.join("; ")}`);
  return changed;
}

// ---------------------------------------------------------------------------------------------
// opening a session
function showEmpty(html) {
  const e = $("empty");
  e.innerHTML = html;
  e.hidden = !html;
  $("canvas-wrap").hidden = !!html;
}

function shellQuote(s) {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`;
}

function emptyStoreState() {
  const label = S.stores.map((s) => s.label).join(", ") || "this store";
  showEmpty(`<h1>No sessions yet</h1><p>${esc(label)} holds no sessions. Record one and it shows up here:</p>
    <code>llmri capture "Why is the sky blue?" -o ${esc(shellQuote(S.stores[0] ? S.stores[0].label : "run.zarr"))}</code>
    <p class="dim">This page checks for new sessions every few seconds.</p>`);
  document.body.classList.add("no-session");
  const sel = $("session-select");
  sel.innerHTML = "<option>(no sessions yet)</option>";
  sel.disabled = true;
  $("session-info").textContent = "";
  $("status-badge").hidden = true;
  $("tokens").innerHTML = "";
  $("counter").textContent = "–";
  $("token-info").innerHTML = "";
}

async function openSession(key, t0 = 0) {
  const seq = ++S.openSeq;
  S.loaded = null;
  const summary = S.sessions.find((s) => s.key === key);
  if (!summary) return;
  stop();
  if (S.ws) { S.ws.close(); S.ws = null; }
  const detail = await getJSON(sessionUrl(summary));
  if (seq !== S.openSeq) return;
  S.cur = { summary: detail.summary, meta: detail.meta, grid: detail.grid };
  document.body.classList.remove("no-session");
  $("session-select").disabled = false;
  S.src = new FrameSource(detail.summary, detail.meta);
  S.src.onload = () => updateTotal(S.src.total);
  S.stats = {};
  S.scales = {};
  S.globalScale = {};
  S.drawn = -1;
  scratch = {};
  setDiff("off");
  $("session-select").value = key;
  const m = detail.meta;
  const model = m.model || {};
  const red = m.reducer || {};
  document.title = `${detail.summary.title || detail.summary.id} · llmri`;
  const chatOnly = detail.summary.chat_only;
  document.body.classList.toggle("chat-only", chatOnly);
  const shape = chatOnly
    ? "chat-only, no activations"
    : `${m.layers ? m.layers.length : 0} layers · ${esc(red.kind || "–")} ${m.tile ? m.tile.join("×") : ""}`;
  $("session-info").innerHTML =
    `<b>${esc(model.name || "?")}</b> · ${esc(m.backend || "")} · ${shape} · ` +
    `<span id="ntok">${detail.summary.n_frames}</span> tokens · ${esc(
      (m.created || "").replace("T", " ").replace("+00:00", " UTC"),
    )}`;
  setBadge(detail.summary.status);
  const tok = await getJSON(`${sessionUrl(summary)}/tokens`);
  if (seq !== S.openSeq) return;
  S.tokens = tok.tokens;
  buildTokenStrip();
  buildSignalModes();
  const n = detail.summary.n_frames;
  banner("");
  if (detail.summary.status === "interrupted") {
    const why = m.stop_reason ? ` (${m.stop_reason})` : "";
    banner(`This session was interrupted after ${n} token${n === 1 ? "" : "s"}${why}: showing what was committed.`);
  }
  if (detail.summary.chat_only) {
    showEmpty(`<h1>Chat-only session</h1><p>Recorded through <b>${esc(m.backend || "a chat API")}</b>, which gives tokens and
      log-probabilities but no activations, so there are no frames to draw. The token strip and the Token panel still work.</p>`);
  } else if (n === 0) {
    showEmpty(detail.summary.status === "recording"
      ? `<h1>Waiting for the first frame…</h1><p>This session is being recorded; frames appear as they are committed.</p>`
      : `<h1>No frames</h1><p>This session ended (${esc(detail.summary.status)}) before its first frame was committed.</p>`);
  } else {
    showEmpty("");
  }
  updateTotal(n, true);
  layout();
  await loadStats();
  if (seq !== S.openSeq) return;
  if (detail.summary.status === "recording") {
    followLive(detail.summary);
    t0 = n - 1; // a session being recorded opens on its newest frame and follows it
  }
  seek(Math.min(Math.max(0, t0), Math.max(0, n - 1)));
  drawSparklines();
  S.loaded = key; // fully open: tokens, layout, stats and the first frame requested
}

function setBadge(status) {
  const b = $("status-badge");
  b.hidden = false;
  b.textContent = status;
  b.className = `badge ${status}`;
}

function buildSignalModes() {
  const sigs = S.cur.meta.signals || [];
  const el = $("signal-mode");
  el.innerHTML = "";
  const modes = sigs.length > 1 ? ["all", ...sigs, "composite"] : sigs.length ? [sigs[0]] : [];
  for (const m of modes) {
    const b = document.createElement("button");
    b.dataset.v = m;
    b.textContent = m;
    b.title = m === "composite" ? "one grid, hue = signal (resid blue, attn orange, mlp green)" : m === "all" ? "one grid per signal" : SIGNAL_TITLES[m] || m;
    el.appendChild(b);
  }
  if (!modes.includes(S.mode)) S.mode = modes[0] || "all";
  segment(el, S.mode, (v) => { S.mode = v; setSeg(el, v); layout(); drawSparklines(); updateColorbar(); redraw(); });
}

function shownSignals() {
  const sigs = S.cur ? S.cur.meta.signals || [] : [];
  if (S.mode === "all" || S.mode === "composite") return sigs;
  return sigs.includes(S.mode) ? [S.mode] : sigs.slice(0, 1);
}

function grids() {
  const sigs = shownSignals();
  if (S.mode === "composite") return [{ name: "composite", title: "composite", signals: sigs }];
  return sigs.map((s) => ({ name: s, title: s, subtitle: SIGNAL_TITLES[s] || "", signals: [s] }));
}

function layout() {
  if (!S.cur || !(S.cur.meta.signals || []).length) return;
  const stage = $("stage");
  const [rows, cols] = S.cur.grid;
  const m = S.cur.meta;
  renderer.setLayout(grids(), rows, cols, m.layers.length, m.tile[0], m.tile[1], stage.clientWidth - 30, stage.clientHeight - 30, m);
  S.drawn = -1;
  redraw();
}

// ---------------------------------------------------------------------------------------------
// stats, scales, sparklines
async function loadStats() {
  const sigs = S.cur.meta.signals || [];
  const L = (S.cur.meta.layers || []).length;
  await Promise.all(
    sigs.map(async (s) => {
      try {
        const { header, data } = await getArray(`${sessionUrl(S.cur.summary)}/stats?signal=${s}`);
        const n = header.shape[1];
        const norm = data.subarray(0, n * L), sp = data.subarray(n * L, 2 * n * L);
        let lo = Infinity, hi = -Infinity;
        for (const v of sp) { if (v < lo) lo = v; if (v > hi) hi = v; }
        S.stats[s] = { norm, sp, n, spMin: lo, spMax: hi > lo ? hi : lo + 1 };
      } catch (e) {
        console.warn("stats", s, e);
      }
    }),
  );
  for (const s of sigs) {
    // Same rule as llmri.colormaps (and so the PNG exporter): a missing or non-positive scale counts as 1.
    const given = ((S.cur.meta.scales || {})[s] || []).map(Number);
    if (given.length === L) setScales(s, Float32Array.from(given, (x) => (x > 0 && Number.isFinite(x) ? x : 1)));
  }
}

function setScales(s, arr) {
  S.scales[s] = arr;
  S.globalScale[s] = Float32Array.from(arr, () => Math.max(...arr));
}

/** Scales a session lacks (no calibration) are estimated from its first chunk: the 99th percentile of |v| per
 * layer, as llmri.render.fallback_scales does for one frame (a whole chunk keeps them steady while scrubbing). */
function estimateScales(s, src) {
  const L = src.layers, per = src.h * src.w;
  const out = new Float32Array(L);
  for (let l = 0; l < L; l++) {
    const vals = [];
    for (let t = 0; t < Math.min(src.total, src.chunk); t++) {
      const f = src.get(s, t);
      if (!f) continue;
      for (let i = 0; i < per; i++) vals.push(Math.abs(f[l * per + i]));
    }
    vals.sort((a, b) => a - b);
    out[l] = vals.length ? vals[Math.floor(0.99 * (vals.length - 1))] || 1 : 1;
  }
  setScales(s, out);
}

let sparkBg = null;
function sparkSignal() {
  const sigs = S.cur ? S.cur.meta.signals || [] : [];
  return sigs.includes(S.mode) ? S.mode : sigs[0];
}

function drawSparklines() {
  const c = $("sparklines");
  const ctx = c.getContext("2d");
  const dpr = window.devicePixelRatio || 1;
  const cssW = c.clientWidth || 800;
  const s = sparkSignal();
  const st = s && S.stats[s];
  const L = S.cur ? (S.cur.meta.layers || []).length : 0;
  const rowH = L ? Math.max(3, Math.min(10, Math.floor(110 / L))) : 0;
  const top = 22; // surprisal row above the per-layer rows
  const cssH = L ? top + L * rowH + 2 : 40;
  c.style.height = `${cssH}px`;
  c.width = Math.round(cssW * dpr);
  c.height = Math.round(cssH * dpr);
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, cssW, cssH);
  const left = 34;
  const W = cssW - left - 4;
  const n = S.src ? S.src.total : 0;
  sparkBg = { left, W, top, rowH, L, n, cssW, cssH, dpr };
  ctx.font = "10px ui-monospace, Menlo, monospace";
  ctx.textBaseline = "middle";
  ctx.fillStyle = "#7d8a9b";
  // surprisal row: -logprob of each token (how unexpected it was)
  ctx.fillText("surp", 0, (top - 4) / 2);
  if (n > 0 && S.tokens.length) {
    for (let x = 0; x < W; x++) {
      const a = Math.floor((x / W) * S.tokens.length), b = Math.max(a + 1, Math.floor(((x + 1) / W) * S.tokens.length));
      let v = 0;
      for (let i = a; i < b && i < S.tokens.length; i++) {
        const lp = S.tokens[i].logprob;
        if (lp !== null) v = Math.max(v, -lp);
      }
      const h = Math.min(1, v / 10) * (top - 6);
      ctx.fillStyle = S.tokens[a] && S.tokens[a].role === "prompt" ? "#3d4a5a" : "#ffb74d";
      ctx.fillRect(left + x, top - 4 - h, 1, h);
    }
  }
  if (!st || !L) {
    ctx.fillStyle = "#7d8a9b";
    if (S.cur && !(S.cur.meta.signals || []).length) ctx.fillText("no activations in a chat-only session", left, top + 10);
    return;
  }
  const lut = S.luts.energy || S.luts.grayscale;
  const N = st.n;
  for (let l = 0; l < L; l++) {
    // Robust range (5th-95th percentile): the first token's huge norm (an attention sink) would flatten the rest.
    const col = new Float32Array(N);
    for (let t = 0; t < N; t++) col[t] = st.norm[t * L + l];
    col.sort();
    const lo = col[Math.floor(0.05 * (N - 1))], hi = col[Math.ceil(0.95 * (N - 1))];
    const span = hi > lo ? hi - lo : 1;
    const y0 = top + l * rowH;
    for (let x = 0; x < W; x++) {
      const a = Math.floor((x / W) * N), b = Math.max(a + 1, Math.floor(((x + 1) / W) * N));
      let v = -Infinity;
      for (let t = a; t < b && t < N; t++) v = Math.max(v, st.norm[t * L + l]);
      if (v === -Infinity) continue;
      const u = Math.max(0, Math.min(1, (v - lo) / span));
      const i = Math.max(0, Math.min(255, Math.round(u * 255)));
      ctx.fillStyle = `rgb(${lut[3 * i]},${lut[3 * i + 1]},${lut[3 * i + 2]})`;
      const h = Math.max(1, u * (rowH - 1));
      ctx.fillRect(left + x, y0 + rowH - 1 - h, 1, h);
    }
    if (l % 5 === 0 || l === L - 1) {
      ctx.fillStyle = "#6f7f93";
      ctx.fillText(`L${l}`, 0, y0 + rowH / 2);
    }
  }
  ctx.textAlign = "right";
  const label = `surprisal −log p  ·  ‖${s}‖ per layer (5–95th pct)`;
  const lw = ctx.measureText(label).width;
  ctx.fillStyle = "#121820";
  ctx.fillRect(cssW - lw - 10, 0, lw + 10, top - 5);
  ctx.fillStyle = "#7d8a9b";
  ctx.fillText(label, cssW - 4, (top - 4) / 2);
  ctx.textAlign = "left";
  sparkBg.img = ctx.getImageData(0, 0, c.width, c.height);
  drawPlayhead();
}

function drawPlayhead() {
  if (!sparkBg || !sparkBg.img || !sparkBg.n) return;
  const c = $("sparklines");
  const ctx = c.getContext("2d");
  ctx.putImageData(sparkBg.img, 0, 0);
  const { left, W, cssH, n, dpr } = sparkBg;
  const x = left + ((S.t + 0.5) / n) * W;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = "#4fc3f7";
  ctx.fillRect(Math.round(x) - 1, 0, 2, cssH);
}

// ---------------------------------------------------------------------------------------------
// tokens
function buildTokenStrip() {
  const el = $("tokens");
  el.innerHTML = "";
  const special = new Set((S.cur.meta.special_ids || []).map(Number));
  const frag = document.createDocumentFragment();
  S.tokens.forEach((t, i) => frag.appendChild(tokenSpan(t, i, special)));
  el.appendChild(frag);
  S.curSpan = null;
}

function tokenSpan(t, i, special) {
  const span = document.createElement("span");
  span.className = `t ${t.role === "prompt" ? "p" : "g"}${special.has(t.id) ? " s" : ""}`;
  span.dataset.i = i;
  span.textContent = showTok(t.text);
  return span;
}

function appendTokens(list) {
  const special = new Set((S.cur.meta.special_ids || []).map(Number));
  const el = $("tokens");
  const atBottom = el.scrollTop + el.clientHeight >= el.scrollHeight - 4;
  for (const t of list) {
    S.tokens.push(t);
    el.appendChild(tokenSpan(t, S.tokens.length - 1, special));
  }
  if (atBottom) el.scrollTop = el.scrollHeight;
}

function highlightToken(t) {
  const el = $("tokens");
  if (S.curSpan) S.curSpan.classList.remove("cur");
  const span = el.children[t];
  S.curSpan = span || null;
  if (!span) return;
  span.classList.add("cur");
  // Scrolling reads layout; do it once per animation frame, off the slider -> frame path.
  if (!scrollPending) {
    scrollPending = true;
    requestAnimationFrame(() => {
      scrollPending = false;
      const cur = S.curSpan;
      if (!cur) return;
      const top = cur.offsetTop - el.offsetTop, bottom = top + cur.offsetHeight;
      if (top < el.scrollTop || bottom > el.scrollTop + el.clientHeight) el.scrollTop = top - el.clientHeight / 2;
    });
  }
}
let scrollPending = false;

/** Inline styles are blocked by the page's CSP, so bar widths are set through the CSSOM. */
function setBars(el) {
  for (const b of el.querySelectorAll(".bar[data-w]")) b.style.width = `${b.dataset.w}%`;
}

function tokenHTML(t) {
  if (!t) return "";
  const p = t.logprob === null ? null : Math.exp(t.logprob);
  let html = `<div><span class="tok">${esc(oneLine(t.text))}</span> <span class="dim">#${t.index} · ${t.role} · id ${t.id}</span></div>`;
  html += `<div class="kv gap">`;
  html += `<span>logprob</span><span>${t.logprob === null ? "– (first token)" : `${fmt(t.logprob)}  (p ${fmt(p)})`}</span>`;
  html += `<span>entropy</span><span>${t.entropy === null ? "–" : `${fmt(t.entropy)} nats`}</span></div>`;
  if (t.top && t.top.length) {
    html += `<div class="alts">`;
    for (const a of t.top.slice(0, 5)) {
      const chosen = a.id === t.id ? " chosen" : "";
      html += `<div class="alt${chosen}"><div class="bar" data-w="${Math.round(a.prob * 100)}"></div><span>${esc(oneLine(a.text))}</span></div>`;
      html += `<div class="alt-p">${(a.prob * 100).toFixed(1)}%</div>`;
    }
    html += `</div>`;
  }
  return html;
}

// ---------------------------------------------------------------------------------------------
// drawing
function opts() {
  const signed = S.cmap === "diverging";
  return {
    lut: S.luts[S.cmap],
    signed,
    window: S.window,
    level: S.level,
    sparsity: S.sparsity,
    grayscale: S.cmap === "grayscale",
  };
}

function needed(t) {
  const out = [];
  for (const s of shownSignals()) {
    out.push([S.src, s, t]);
    if (S.diff === "prev" && t > 0) out.push([S.src, s, t - 1]);
    if (S.diff === "session" && S.diffSrc && t < S.diffSrc.total) out.push([S.diffSrc, s, t]);
  }
  return out;
}

function frameValues(s, t) {
  const a = S.src.get(s, t);
  if (!a || S.diff === "off") return a;
  let b = null;
  if (S.diff === "prev") b = t > 0 ? S.src.get(s, t - 1) : null;
  else if (S.diffSrc) b = t < S.diffSrc.total ? S.diffSrc.get(s, t) : null;
  if (!b) return S.diff === "prev" ? new Float32Array(a.length) : null;
  const out = scratch[s] && scratch[s].length === a.length ? scratch[s] : (scratch[s] = new Float32Array(a.length));
  for (let i = 0; i < a.length; i++) out[i] = a[i] - b[i];
  return out;
}

function redraw() {
  S.drawn = -1;
  tryDraw();
}

function tryDraw() {
  if (!S.cur || !S.src || !renderer.layout || !(S.cur.meta.signals || []).length) return false;
  const t = S.t;
  if (t >= S.src.total) return false;
  const miss = needed(t).filter(([src, s, u]) => !src.has(s, u));
  if (miss.length) {
    $("loading").hidden = false;
    // Draw as soon as the last missing chunk lands (not on the next animation frame: that adds up to 16 ms).
    const groups = new Map(); // one request per (source, frame): every missing signal at once
    for (const [src, s, u] of miss) {
      const k = `${src.url}|${u}`;
      if (!groups.has(k)) groups.set(k, [src, u, []]);
      groups.get(k)[2].push(s);
    }
    for (const [src, u, sigs] of groups.values()) {
      src.ensureMany(sigs, u).then(() => { if (S.t === t && S.drawn !== t) tryDraw(); }, fetchFailed);
    }
    return false;
  }
  $("loading").hidden = true;
  const g = grids();
  for (const s of shownSignals()) if (!S.scales[s]) estimateScales(s, S.src);
  const data = g.map((grid) => {
    const values = {}, scales = {};
    for (const s of grid.signals) {
      values[s] = frameValues(s, t);
      scales[s] = S.norm === "global" ? S.globalScale[s] : S.scales[s];
    }
    let sat = null;
    const st = S.stats[grid.signals[0]];
    if (S.sparsity && st && t < st.n) {
      const L = S.cur.meta.layers.length;
      sat = new Float32Array(L);
      for (let l = 0; l < L; l++) sat[l] = (st.sp[t * L + l] - st.spMin) / (st.spMax - st.spMin);
    }
    return { values, scales, sat };
  });
  const t0 = performance.now();
  renderer.draw(data, opts());
  S.lastDrawMs = performance.now() - t0;
  S.drawn = t;
  S.drawCount++;
  const ready = S.waiters.filter((w) => w.t === t);
  S.waiters = S.waiters.filter((w) => w.t !== t);
  for (const w of ready) w.resolve(t);
  const dir = S.lastDir || 1;
  S.src.prefetch(shownSignals(), t, dir, S.playing ? 3 : 1);
  if (S.diffSrc) S.diffSrc.prefetch(shownSignals(), t, dir, 1);
  updateReadout();
  return true;
}

function fetchFailed(e) {
  if (e && e.name === "AbortError") return;
  banner(`could not load frames: ${e instanceof ApiError ? e.message : e}`, "error");
}

let hashTimer = 0;
function seek(t, { fromSlider = false } = {}) {
  if (!S.cur) return Promise.resolve(-1);
  const n = Math.max(S.src.total, S.tokens.length);
  t = Math.max(0, Math.min(n - 1, t | 0));
  S.lastDir = t >= S.t ? 1 : -1;
  S.t = t;
  if (!fromSlider) $("slider").value = String(t);
  const tok = S.tokens[t];
  $("counter").textContent = `token ${t + 1} / ${n}` + (tok ? ` · ${tok.role}` : "");
  highlightToken(t);
  $("token-info").innerHTML = tokenHTML(tok);
  setBars($("token-info"));
  drawPlayhead();
  clearTimeout(hashTimer);
  hashTimer = setTimeout(() => history.replaceState(null, "", `#${S.cur.summary.key}/${S.t}`), 200);
  const p = new Promise((resolve) => {
    if (S.drawn === t) resolve(t);
    else S.waiters.push({ t, resolve });
  });
  if (S.drawn !== t) tryDraw();
  if (!(S.cur.meta.signals || []).length) {
    S.drawn = t; // a chat-only session has nothing to draw: the token panel is the whole frame
    for (const w of S.waiters.splice(0)) w.resolve(w.t);
  }
  return p;
}

function updateTotal(n, force = false) {
  const old = Number($("slider").max) + 1;
  if (!force && n <= old) return;
  $("slider").max = String(Math.max(0, n - 1));
  const nt = $("ntok");
  if (nt) nt.textContent = String(n);
  if (S.cur) $("counter").textContent = `token ${S.t + 1} / ${n}`;
}

// ---------------------------------------------------------------------------------------------
// hover readout
function updateReadout() {
  const h = S.hover;
  const el = $("readout");
  if (!h || !S.cur || !renderer.layout) {
    el.innerHTML = `<span class="dim">hover a pixel</span>`;
    $("tooltip").hidden = true;
    return;
  }
  const L = renderer.layout;
  const grid = L.grids[h.grid];
  const W = S.cur.meta.tile[1];
  const idx = h.y * W + h.x;
  const per = L.h * L.w;
  const red = S.cur.meta.reducer || {};
  const nValues = red.n_values || (isNeurons() ? S.cur.meta.model && S.cur.meta.model.d_model : null);
  let rows = "";
  let headline = "";
  const pixelName = isNeurons()
    ? nValues && idx >= nValues ? `pixel ${idx} (padding)` : `neuron ${idx}`
    : `pixel ${idx}`;
  for (const s of grid.signals) {
    const a = S.src.get(s, S.t);
    const val = a ? a[h.layer * per + idx] : NaN;
    const scale = (S.norm === "global" ? S.globalScale[s] : S.scales[s]) || [1];
    const sc = scale[h.layer] || 1;
    let line = `${fmt(val)}`;
    if (S.diff !== "off") {
      const d = frameValues(s, S.t);
      const dv = d ? d[h.layer * per + idx] : NaN;
      line = `Δ ${fmt(dv)}  (this ${fmt(val)})`;
      if (!headline) headline = fmt(dv);
    } else if (!headline) headline = fmt(val);
    rows += `<span>${esc(s)}</span><span>${line}</span>`;
    rows += `<span>÷ scale</span><span>${fmt(val / sc, 3)} <span class="dim">(scale ${fmt(sc, 2)})</span></span>`;
    const st = S.stats[s];
    if (st && S.t < st.n) {
      const Ls = S.cur.meta.layers.length;
      rows += `<span>layer ‖x‖</span><span>${fmt(st.norm[S.t * Ls + h.layer], 1)}</span>`;
      rows += `<span>sparsity</span><span>${fmt(st.sp[S.t * Ls + h.layer], 3)}</span>`;
    }
  }
  el.innerHTML =
    `<div class="big">${headline}</div>` +
    `<div class="kv"><span>layer</span><span>${h.layer} <span class="dim">${esc(S.cur.meta.layers[h.layer] || "")}</span></span>` +
    `<span>signal</span><span>${esc(grid.signals.join(" + "))}</span>` +
    `<span>${isNeurons() ? "neuron" : "pixel"}</span><span>${pixelName.replace(/^(neuron|pixel) /, "")} <span class="dim">(row ${h.y}, col ${h.x})</span></span>` +
    rows +
    `</div>`;
  const tip = $("tooltip");
  let extra = "";
  if (grid.signals.length === 1) {
    const s = grid.signals[0];
    const a = S.src.get(s, S.t);
    const sc = ((S.norm === "global" ? S.globalScale[s] : S.scales[s]) || [1])[h.layer] || 1;
    if (a) extra += `<br><span class="dim">÷ scale</span> ${fmt(a[h.layer * per + idx] / sc, 3)}`;
    const st = S.stats[s];
    if (st && S.t < st.n) {
      const Ls = S.cur.meta.layers.length;
      extra += `<br><span class="dim">layer ‖x‖</span> ${fmt(st.norm[S.t * Ls + h.layer], 1)}`;
      extra += ` <span class="dim">sparsity</span> ${fmt(st.sp[S.t * Ls + h.layer], 2)}`;
    }
  }
  tip.innerHTML =
    `<span class="h">${esc(grid.signals.join("+"))} · L${h.layer} · ${pixelName}</span> <span class="dim">(r${h.y}, c${h.x})</span>` +
    `<br>${S.diff !== "off" ? "Δ " : ""}value <b>${headline}</b>${extra}`;
  tip.hidden = false;
}

function placeTip(ev) {
  const tip = $("tooltip");
  const x = Math.min(ev.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
  const y = Math.min(ev.clientY + 14, window.innerHeight - tip.offsetHeight - 8);
  tip.style.left = `${x}px`;
  tip.style.top = `${y}px`;
}

async function savePng() {
  if (!S.cur || !renderer.layout || !(S.cur.meta.signals || []).length) return;
  const blob = await renderer.snapshot();
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  const diff = S.diff === "off" ? "" : S.diff === "prev" ? "-dprev" : "-dsession";
  a.download = `llmri-${S.cur.summary.id}-t${S.t}-${S.mode}-${S.cmap}${diff}.png`;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 5000);
}

// ---------------------------------------------------------------------------------------------
// playback
let playTimer = 0;
let lastTick = 0;
function play() {
  if (!S.cur || S.playing) return;
  if (S.t >= S.src.total - 1 && S.cur.summary.status !== "recording") seek(0);
  S.playing = true;
  $("play").textContent = "❚❚";
  $("play").setAttribute("aria-label", "pause");
  lastTick = performance.now();
  const step = (now) => {
    if (!S.playing) return;
    const speed = Number($("speed").value);
    if (now - lastTick >= 1000 / speed && S.drawn === S.t) {
      lastTick = now;
      if (S.t < S.src.total - 1) seek(S.t + 1);
      else if (S.cur.summary.status !== "recording") { stop(); return; }
    }
    playTimer = requestAnimationFrame(step);
  };
  playTimer = requestAnimationFrame(step);
}
function stop() {
  S.playing = false;
  cancelAnimationFrame(playTimer);
  $("play").textContent = "▶";
  $("play").setAttribute("aria-label", "play");
}

// ---------------------------------------------------------------------------------------------
// colour controls
function setCmap(name) {
  if (!S.luts[name]) return;
  S.cmap = name;
  setSeg($("cmap"), name);
  updateColorbar();
  redraw();
}

function updateColorbar() {
  const o = opts();
  const composite = S.mode === "composite";
  $("cmap").classList.toggle("inert", composite); // the composite colours by signal, not by a colour map
  $("cmap").title = composite ? "the composite view colours each signal by its own hue" : "";
  const unitLabel = S.norm === "global" ? "absolute value (global scale)" : "× each layer's scale";
  let label = `${S.diff !== "off" ? "Δ " : ""}${o.signed ? "signed value" : "|value|"}, ${unitLabel}`;
  if (composite) label = `|value| per channel, ${unitLabel}`;
  let unit = 1;
  if (S.norm === "global") {
    const s = shownSignals()[0];
    unit = S.globalScale[s] ? S.globalScale[s][0] : 1;
  }
  drawColorbar($("colorbar"), o.lut, o, label, composite, unit);
  $("window-out").textContent = S.window.toFixed(2);
  $("level-out").textContent = S.level.toFixed(2);
}

let prevCmap = "grayscale";
async function setDiff(mode) {
  const msg = $("diff-msg");
  msg.textContent = "";
  msg.className = "msg";
  if (mode === S.diff && mode !== "session") return;
  if (mode !== "off" && S.diff === "off") prevCmap = S.cmap;
  S.diff = mode;
  setSeg($("diff-mode"), mode);
  $("diff-session").hidden = mode !== "session";
  if (mode !== "session") { S.diffSrc = null; S.diffSummary = null; }
  if (mode === "off") {
    setCmap(prevCmap);
  } else {
    setCmap("diverging");
    if (mode === "prev") { msg.textContent = "showing frame t − frame t−1"; msg.className = "msg ok"; }
  }
  if (mode === "session") {
    fillSelect($("diff-session"), S.sessions, null, S.cur.summary.key);
    const others = S.sessions.filter((s) => s.key !== S.cur.summary.key);
    if (!others.length) {
      msg.textContent = "no other session to compare with";
      msg.className = "msg error";
      S.diff = "off";
      setSeg($("diff-mode"), "off");
      $("diff-session").hidden = true;
      setCmap(prevCmap);
      return;
    }
    const pick = others.find((s) => s.model === S.cur.summary.model && s.reducer === S.cur.summary.reducer && !s.chat_only) || others[0];
    $("diff-session").value = pick.key;
    await chooseDiffSession(pick.key);
    return;
  }
  redraw();
}

async function chooseDiffSession(key) {
  const msg = $("diff-msg");
  const other = S.sessions.find((s) => s.key === key);
  try {
    const res = await getJSON(`/api/compare?a=${encodeURIComponent(S.cur.summary.key)}&b=${encodeURIComponent(key)}`);
    const detail = await getJSON(sessionUrl(other));
    S.diffSummary = detail.summary;
    S.diffSrc = new FrameSource(detail.summary, detail.meta);
    msg.textContent = `this − “${(other.title || other.id).slice(0, 40)}” · ${res.n_frames} frames in common`;
    msg.className = "msg ok";
  } catch (e) {
    S.diffSrc = null;
    S.diffSummary = null;
    msg.textContent = e.message;
    msg.className = "msg error";
  }
  redraw();
}

// ---------------------------------------------------------------------------------------------
// live sessions
function followLive(summary) {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}${sessionUrl(summary)}/live`);
  S.ws = ws;
  let statsTimer = 0;
  ws.onclose = (e) => {
    // the server closes with 1000 once the session is no longer recording; anything else: try again
    const still = S.ws === ws && S.cur && S.cur.summary.key === summary.key && S.cur.summary.status === "recording";
    if (still && e.code !== 1000) setTimeout(() => { if (S.ws === ws) followLive(summary); }, 1500);
  };
  ws.onmessage = async (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.type !== "progress" || !S.cur || S.cur.summary.key !== summary.key) return;
    const before = S.src.total;
    const following = S.t >= before - 1;
    if (msg.n_frames > S.tokens.length) {
      const tok = await getJSON(`${sessionUrl(summary)}/tokens?start=${S.tokens.length}`);
      if (S.cur.summary.key !== summary.key) return;
      appendTokens(tok.tokens.filter((t) => t.index >= S.tokens.length));
    }
    if (msg.n_frames > before) {
      S.src.total = msg.n_frames;
      S.cur.summary.n_frames = msg.n_frames;
      updateTotal(msg.n_frames);
      if (before === 0 && (S.cur.meta.signals || []).length) { showEmpty(""); layout(); }
      if (following) seek(msg.n_frames - 1);
      clearTimeout(statsTimer);
      statsTimer = setTimeout(async () => { await loadStats(); drawSparklines(); }, 400);
    }
    if (msg.status !== S.cur.summary.status) {
      S.cur.summary.status = msg.status;
      setBadge(msg.status);
      if (msg.status === "interrupted") banner(`This session was interrupted after ${msg.n_frames} tokens.`);
      refreshSessions();
    }
  };
}

// ---------------------------------------------------------------------------------------------
// wiring
function wire() {
  $("session-select").onchange = (e) => openSession(e.target.value).catch(fetchFailed);
  $("slider").addEventListener("input", (e) => { stop(); seek(Number(e.target.value), { fromSlider: true }); });
  $("play").onclick = () => (S.playing ? stop() : play());
  segment($("cmap"), S.cmap, setCmap);
  segment($("norm"), S.norm, (v) => { S.norm = v; setSeg($("norm"), v); updateColorbar(); redraw(); });
  segment($("diff-mode"), S.diff, (v) => setDiff(v));
  $("diff-session").onchange = (e) => chooseDiffSession(e.target.value);
  $("window").addEventListener("input", (e) => { S.window = Number(e.target.value); updateColorbar(); redraw(); });
  $("level").addEventListener("input", (e) => { S.level = Number(e.target.value); updateColorbar(); redraw(); });
  $("sparsity").onchange = (e) => { S.sparsity = e.target.checked; redraw(); };
  $("reset-wl").onclick = () => {
    S.window = 1; S.level = 0.5;
    $("window").value = "1"; $("level").value = "0.5";
    updateColorbar(); redraw();
  };
  $("help-btn").onclick = () => { $("help").hidden = !$("help").hidden; };
  $("save-png").onclick = savePng;
  $("tokens").addEventListener("click", (e) => {
    const i = e.target.dataset && e.target.dataset.i;
    if (i !== undefined) { stop(); seek(Number(i)); }
  });
  $("tokens").addEventListener("mousemove", (e) => {
    const i = e.target.dataset && e.target.dataset.i;
    const tip = $("tooltip");
    if (i === undefined) { tip.hidden = true; return; }
    tip.innerHTML = tokenHTML(S.tokens[Number(i)]);
    setBars(tip);
    tip.hidden = false;
    placeTip(e);
  });
  $("tokens").addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
  const view = $("view");
  view.addEventListener("mousemove", (e) => {
    const r = view.getBoundingClientRect();
    const h = renderer.hit(e.clientX - r.left, e.clientY - r.top);
    S.hover = h;
    renderer.setHover(h);
    updateReadout();
    if (h) placeTip(e);
  });
  view.addEventListener("mouseleave", () => { S.hover = null; renderer.setHover(null); updateReadout(); });
  const spark = $("sparklines");
  const sparkSeek = (e) => {
    if (!sparkBg || !sparkBg.n) return;
    const r = spark.getBoundingClientRect();
    const u = (e.clientX - r.left - sparkBg.left) / sparkBg.W;
    if (u >= 0 && u <= 1) { stop(); seek(Math.floor(u * sparkBg.n)); }
  };
  spark.addEventListener("mousedown", (e) => { sparkSeek(e); spark.onmousemove = (ev) => ev.buttons && sparkSeek(ev); });
  spark.addEventListener("mouseup", () => { spark.onmousemove = null; });
  spark.addEventListener("mousemove", (e) => {
    const tip = $("tooltip");
    const b = sparkBg;
    if (!b || !b.n || !S.cur) { tip.hidden = true; return; }
    const r = spark.getBoundingClientRect();
    const u = (e.clientX - r.left - b.left) / b.W;
    const t = Math.floor(u * b.n);
    if (u < 0 || u > 1 || t >= b.n) { tip.hidden = true; return; }
    const y = e.clientY - r.top;
    const tok = S.tokens[t];
    let html = `<span class="h">token ${t}</span> ${esc(oneLine(tok ? tok.text : ""))}`;
    if (y < b.top) {
      html += `<br>surprisal ${tok && tok.logprob !== null ? fmt(-tok.logprob, 2) : "–"} nats`;
    } else {
      const l = Math.min(b.L - 1, Math.floor((y - b.top) / b.rowH));
      const s = sparkSignal();
      const st = S.stats[s];
      if (st && t < st.n) html += `<br>L${l} ‖${esc(s)}‖ ${fmt(st.norm[t * b.L + l], 1)} · sparsity ${fmt(st.sp[t * b.L + l], 2)}`;
    }
    tip.innerHTML = html;
    tip.hidden = false;
    placeTip(e);
  });
  spark.addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
  document.addEventListener("keydown", (e) => {
    if (!S.cur) return;
    const tag = e.target.tagName;
    if (tag === "SELECT" || (tag === "INPUT" && e.target.type !== "range" && e.target.type !== "checkbox")) return;
    if (tag === "INPUT" && e.target.type === "range" && e.target.id !== "slider" && (e.key === "ArrowLeft" || e.key === "ArrowRight")) return;
    const big = e.shiftKey ? 10 : 1;
    let handled = true;
    if (e.key === "ArrowRight") { stop(); seek(S.t + big); }
    else if (e.key === "ArrowLeft") { stop(); seek(S.t - big); }
    else if (e.key === "Home") { stop(); seek(0); }
    else if (e.key === "End") { stop(); seek(S.src.total - 1); }
    else if (e.key === " ") { S.playing ? stop() : play(); }
    else if (e.key === "g") setCmap("grayscale");
    else if (e.key === "e") setCmap("energy");
    else if (e.key === "d") setCmap("diverging");
    else if (e.key === "p") setDiff(S.diff === "prev" ? "off" : "prev");
    else if (e.key === "s") savePng();
    else if (e.key === "Escape") $("help").hidden = true;
    else if (e.key === "?") $("help").hidden = !$("help").hidden;
    else handled = false;
    if (handled) e.preventDefault();
  });
  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => { layout(); drawSparklines(); }, 120);
  });
}

/** A remote viewer's launch token came in the URL; once a request has worked without it (the page load set
 * its HttpOnly cookie), take it out of the address bar and this history entry. Other parameters and the hash stay. */
function dropTokenFromUrl() {
  const isToken = (part) => {
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
    for (const [name, flat] of Object.entries(cm.luts)) S.luts[name] = Uint8Array.from(flat);
  } catch (e) {
    banner(`cannot reach the viewer server: ${e.message}`, "error");
    return;
  }
  dropTokenFromUrl();
  updateColorbar();
  await refreshSessions();
  const [hk, hs, ht] = decodeURIComponent(location.hash.slice(1)).split("/");
  const want = hk && hs ? `${hk}/${hs}` : null;
  const first = S.sessions.find((s) => s.key === want) || S.sessions[0];
  if (first) await openSession(first.key, first.key === want ? Number(ht) || 0 : 0);
  else emptyStoreState();
  window.llmri.ready = true;
  setInterval(async () => {
    if (document.hidden) return;
    const changed = await refreshSessions();
    if (changed && !S.cur && S.sessions.length) openSession(S.sessions[0].key);
  }, 4000);
}

// A small handle for tests and benchmarks (and for curious users in the console).
window.llmri = {
  ready: false,
  state: S,
  renderer,
  seek,
  setCmap,
  setDiff,
  openSession,
  // for live.js (the live chat panel): the pieces it drives while a session streams in
  internal: { refreshSessions, appendTokens, updateTotal, layout, showEmpty, loadStats, drawSparklines, banner, setBadge },
  clearCache: () => LRU.clear(),
  /** Resolves when frame t has been drawn (for tests and benchmarks). */
  whenDrawn: (t) => (S.drawn === t ? Promise.resolve(t) : new Promise((resolve) => S.waiters.push({ t, resolve }))),
  get drawCount() { return S.drawCount; },
  get drawn() { return S.drawn; },
};

main().catch((e) => banner(`viewer error: ${e.message}`, "error"));
