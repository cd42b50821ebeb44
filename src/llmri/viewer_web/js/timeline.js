// @ts-check
// The timeline: the playhead (seek, play), the slider and counter, the token strip and the sparklines.
import { chat, emit, on, view } from "./state.js";
import { loadStats, whenDrawn } from "./tiles.js";
import { attentionTip } from "./attention.js";
import { hideTip, showTip, tokenHTML } from "./inspector.js";
import { context2d } from "./render.js";
import { $, dataOf, esc, fmt, oneLine, showTok } from "./ui.js";

/** @typedef {import("./state.js").Token} Token */
/** @typedef {import("./state.js").Stats} Stats */

// ---------------------------------------------------------------------------------------------
// the playhead
let hashTimer = 0;
/** @type {string | null} the session the address names */
let hashKey = null;

function writeHash() {
  if (!view.cur) return;
  hashKey = view.cur.summary.key;
  history.replaceState(null, "", `#${hashKey}/${view.t}`);
}

/** Move the playhead to token t; resolves when its frame is drawn. @param {number} t @returns {Promise<number>} */
export function seek(t, { fromSlider = false } = {}) {
  if (!view.cur || !view.src) return Promise.resolve(-1);
  const n = Math.max(view.src.total, view.tokens.length);
  t = Math.max(0, Math.min(n - 1, t | 0));
  view.lastDir = t >= view.t ? 1 : -1;
  view.t = t;
  if (!fromSlider) $("slider", HTMLInputElement).value = String(t);
  const tok = view.tokens[t];
  $("counter").textContent = `token ${t + 1} / ${n}` + (tok ? ` · ${tok.role}` : "");
  highlightToken(t);
  drawPlayhead();
  // the address names the session and token shown: a new session at once (a reload right after a
  // live answer must reopen that answer, not the one before), the token when the playhead rests
  clearTimeout(hashTimer);
  if (view.cur.summary.key !== hashKey) writeHash();
  else hashTimer = setTimeout(writeHash, 200);
  const p = whenDrawn(t); // before "seek": the frame may be drawn at once, from the cache
  emit("seek", t);
  return p;
}

/** The slider and the counters say n frames (only ever more, unless `force`d: a session opened). @param {number} n */
export function updateTotal(n, force = false) {
  const slider = $("slider", HTMLInputElement);
  const old = Number(slider.max) + 1;
  if (!force && n <= old) return;
  slider.max = String(Math.max(0, n - 1));
  const nt = document.getElementById("ntok"); // in the session's info line, once it is shown
  if (nt) nt.textContent = String(n);
  if (view.cur) $("counter").textContent = `token ${view.t + 1} / ${n}`;
}

let playTimer = 0;
let lastTick = 0;
export function play() {
  if (!view.cur || !view.src || view.playing) return;
  if (view.t >= view.src.total - 1 && view.cur.summary.status !== "recording") seek(0);
  view.playing = true;
  $("play").textContent = "❚❚";
  $("play").setAttribute("aria-label", "pause");
  lastTick = performance.now();
  const step = (/** @type {number} */ now) => {
    if (!view.playing || !view.cur || !view.src) return;
    const speed = Number($("speed", HTMLSelectElement).value);
    if (now - lastTick >= 1000 / speed && view.drawn === view.t) {
      lastTick = now;
      if (view.t < view.src.total - 1) seek(view.t + 1);
      else if (view.cur.summary.status !== "recording") { stop(); return; }
    }
    playTimer = requestAnimationFrame(step);
  };
  playTimer = requestAnimationFrame(step);
}

export function stop() {
  view.playing = false;
  cancelAnimationFrame(playTimer);
  $("play").textContent = "▶";
  $("play").setAttribute("aria-label", "play");
}

// ---------------------------------------------------------------------------------------------
// the token strip
/** The tokens of the session just opened, onto the strip. @param {Token[]} list */
export function setTokens(list) {
  view.tokens = list;
  const el = $("tokens");
  el.innerHTML = "";
  const special = specialIds();
  const frag = document.createDocumentFragment();
  list.forEach((t, i) => frag.appendChild(tokenSpan(t, i, special)));
  el.appendChild(frag);
  view.curSpan = null;
}

/** The special token ids of the session shown (drawn apart on the strip). */
function specialIds() {
  return new Set(((view.cur && view.cur.meta.special_ids) || []).map(Number));
}

/** @param {Token} t @param {number} i @param {Set<number>} special */
function tokenSpan(t, i, special) {
  const span = document.createElement("span");
  span.className = `t ${t.role === "prompt" ? "p" : "g"}${special.has(t.id) ? " s" : ""}`;
  span.dataset.i = String(i);
  span.textContent = showTok(t.text);
  return span;
}

/** More tokens of the session shown (it is being recorded): onto the strip, which stays scrolled down.
 * @param {Token[]} list */
export function appendTokens(list) {
  const special = specialIds();
  const el = $("tokens");
  const atBottom = el.scrollTop + el.clientHeight >= el.scrollHeight - 4;
  for (const t of list) {
    view.tokens.push(t);
    el.appendChild(tokenSpan(t, view.tokens.length - 1, special));
  }
  if (atBottom) el.scrollTop = el.scrollHeight;
}

let scrollPending = false;
/** @param {number} t */
function highlightToken(t) {
  const el = $("tokens");
  if (view.curSpan) view.curSpan.classList.remove("cur");
  const span = el.children[t];
  view.curSpan = span instanceof HTMLElement ? span : null;
  if (!(span instanceof HTMLElement)) return;
  span.classList.add("cur");
  // Scrolling reads layout; do it once per animation frame, off the slider -> frame path.
  if (!scrollPending) {
    scrollPending = true;
    requestAnimationFrame(() => {
      scrollPending = false;
      const cur = view.curSpan;
      if (!cur) return;
      const top = cur.offsetTop - el.offsetTop, bottom = top + cur.offsetHeight;
      if (top < el.scrollTop || bottom > el.scrollTop + el.clientHeight) el.scrollTop = top - el.clientHeight / 2;
    });
  }
}

// ---------------------------------------------------------------------------------------------
// the sparklines: surprisal per token, and each layer's norm per token
/**
 * The drawn strip (without the playhead) and its geometry.
 * @type {{left: number, W: number, top: number, rowH: number, L: number, n: number, cssW: number, cssH: number,
 *   dpr: number, img?: ImageData} | null}
 */
let sparkBg = null;
function sparkSignal() {
  const sigs = view.cur ? view.cur.meta.signals || [] : [];
  return sigs.includes(view.mode) ? view.mode : sigs[0];
}

export function drawSparklines() {
  const c = $("sparklines", HTMLCanvasElement);
  const ctx = context2d(c);
  const dpr = window.devicePixelRatio || 1;
  const cssW = c.clientWidth || 800;
  const s = sparkSignal();
  const st = s && view.stats[s];
  const L = view.cur ? (view.cur.meta.layers || []).length : 0;
  const rowH = L ? Math.max(3, Math.min(10, Math.floor(110 / L))) : 0;
  const top = 22; // surprisal row above the per-layer rows
  const cssH = L ? top + L * rowH + 2 : 40;
  c.style.height = `${cssH}px`;
  c.width = Math.round(cssW * dpr);
  c.height = Math.round(cssH * dpr);
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, cssW, cssH);
  const { left, W } = stripGeometry();
  const n = view.src ? view.src.total : 0;
  sparkBg = { left, W, top, rowH, L, n, cssW, cssH, dpr };
  ctx.font = "10px ui-monospace, Menlo, monospace";
  ctx.textBaseline = "middle";
  ctx.fillStyle = "#7d8a9b";
  ctx.fillText("surp", 0, (top - 4) / 2);
  if (n > 0 && view.tokens.length) drawSurprisal(ctx, left, W, top);
  if (!st || !L) {
    ctx.fillStyle = "#7d8a9b";
    if (view.cur && !(view.cur.meta.signals || []).length) ctx.fillText("no activations in a chat-only session", left, top + 10);
    return;
  }
  for (let l = 0; l < L; l++) drawNormRow(ctx, st, l, L, left, W, top + l * rowH, rowH);
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

/** The surprisal row: -logprob of each token (how unexpected it was).
 * @param {CanvasRenderingContext2D} ctx @param {number} left @param {number} W @param {number} top */
function drawSurprisal(ctx, left, W, top) {
  const toks = view.tokens;
  for (let x = 0; x < W; x++) {
    const a = Math.floor((x / W) * toks.length), b = Math.max(a + 1, Math.floor(((x + 1) / W) * toks.length));
    let v = 0;
    for (let i = a; i < b && i < toks.length; i++) {
      const lp = toks[i].logprob;
      if (lp !== null) v = Math.max(v, -lp);
    }
    const h = Math.min(1, v / 10) * (top - 6);
    ctx.fillStyle = toks[a] && toks[a].role === "prompt" ? "#3d4a5a" : "#ffb74d";
    ctx.fillRect(left + x, top - 4 - h, 1, h);
  }
}

/** Layer l's norm per token, one row of the strip.
 * @param {CanvasRenderingContext2D} ctx @param {Stats} st @param {number} l @param {number} L @param {number} left
 * @param {number} W @param {number} y0 @param {number} rowH */
function drawNormRow(ctx, st, l, L, left, W, y0, rowH) {
  const lut = view.luts.energy || view.luts.grayscale;
  const N = st.n;
  // Robust range (5th-95th percentile): the first token's huge norm (an attention sink) would flatten the rest.
  const col = new Float32Array(N);
  for (let t = 0; t < N; t++) col[t] = st.norm[t * L + l];
  col.sort();
  const lo = col[Math.floor(0.05 * (N - 1))], hi = col[Math.ceil(0.95 * (N - 1))];
  const span = hi > lo ? hi - lo : 1;
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

/** The sparklines' time axis, which the lens strip and the marker ticks share: x = left + (t + 0.5) / n * W. */
export function stripGeometry() {
  const cssW = $("sparklines").clientWidth || 800;
  return { left: 34, W: cssW - 38, n: view.src ? view.src.total : 0 };
}

/** @typedef {{img: ImageData, rowH: number, n: number, W: number, left: number, dpr: number, cssH: number}} LayerStrip */

/** A token × layer strip on the sparklines' time axis (the lens and difference strips), `L` rows high: sized, cleared
 * and labelled; its context, geometry and row height. @param {HTMLCanvasElement} c @param {number} L @param {string} label */
export function beginLayerStrip(c, L, label) {
  const g = stripGeometry();
  const dpr = window.devicePixelRatio || 1;
  const cssW = c.clientWidth || 800;
  const rowH = Math.max(2, Math.min(4, Math.floor(90 / Math.max(1, L))));
  const cssH = L * rowH + 12;
  c.style.height = `${cssH}px`;
  c.width = Math.round(cssW * dpr);
  c.height = Math.round(cssH * dpr);
  const ctx = context2d(c);
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, cssW, cssH);
  ctx.font = "10px ui-monospace, Menlo, monospace";
  ctx.textBaseline = "top";
  ctx.fillStyle = "#7d8a9b";
  ctx.fillText(label, 0, 0);
  return { ctx, g, dpr, rowH, cssH };
}

/** A strip drawn before (`s.img`, its pixels: a layer strip, the feature strip) with the playhead over it.
 * @param {HTMLCanvasElement} c @param {{img: ImageData, n: number, W: number, left: number, dpr: number, cssH: number}} s */
export function layerStripPlayhead(c, s) {
  const ctx = context2d(c);
  ctx.putImageData(s.img, 0, 0);
  const { left, W, n, dpr, cssH } = s;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = "#4fc3f7";
  ctx.fillRect(Math.round(left + ((view.t + 0.5) / n) * W) - 1, 0, 2, cssH);
}

function drawPlayhead() {
  if (!sparkBg || !sparkBg.img || !sparkBg.n) return;
  const c = $("sparklines", HTMLCanvasElement);
  const ctx = context2d(c);
  ctx.putImageData(sparkBg.img, 0, 0);
  const { left, W, cssH, n, dpr } = sparkBg;
  const x = left + ((view.t + 0.5) / n) * W;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = "#4fc3f7";
  ctx.fillRect(Math.round(x) - 1, 0, 2, cssH);
}

let statsTimer = 0;
let lastStats = 0;
/** Stats of a growing session, again: now, or at most every 1.5 s while frames stream in (and once after).
 * @param {boolean} now */
export function refreshStats(now) {
  clearTimeout(statsTimer);
  const due = now || performance.now() - lastStats > 1500;
  const go = async () => {
    lastStats = performance.now();
    await loadStats();
    drawSparklines();
  };
  if (due) go();
  else statsTimer = setTimeout(go, 600);
}

// The playhead on the newest frame stays on the newest frame as a session grows, however it learns of more
// frames (a recording's progress, the live chat's frames, a chunk's header): decided here, when the total
// moves, and never from a total read before an await. The live chat's "follow newest token" can turn it off.
on("grow", (n, before) => {
  updateTotal(n);
  if (chat.follow && view.t >= before - 1 && view.t < n - 1) seek(n - 1);
  refreshStats(false);
});

// ---------------------------------------------------------------------------------------------
export function wireTimeline() {
  const slider = $("slider", HTMLInputElement);
  slider.addEventListener("input", () => { stop(); seek(Number(slider.value), { fromSlider: true }); });
  $("play").onclick = () => (view.playing ? stop() : play());
  const tokens = $("tokens");
  tokens.addEventListener("click", (e) => {
    const i = dataOf(e, "i");
    if (i !== undefined) { stop(); seek(Number(i)); }
  });
  tokens.addEventListener("mousemove", (e) => {
    const i = dataOf(e, "i");
    if (i === undefined) { hideTip(); return; }
    showTip(tokenHTML(view.tokens[Number(i)]) + attentionTip(Number(i)), e);
  });
  tokens.addEventListener("mouseleave", hideTip);
  const spark = $("sparklines");
  const sparkSeek = (/** @type {MouseEvent} */ e) => {
    if (!sparkBg || !sparkBg.n) return;
    const r = spark.getBoundingClientRect();
    const u = (e.clientX - r.left - sparkBg.left) / sparkBg.W;
    if (u >= 0 && u <= 1) { stop(); seek(Math.floor(u * sparkBg.n)); }
  };
  spark.addEventListener("mousedown", (e) => { sparkSeek(e); spark.onmousemove = (ev) => ev.buttons && sparkSeek(ev); });
  spark.addEventListener("mouseup", () => { spark.onmousemove = null; });
  spark.addEventListener("mousemove", (e) => {
    const html = sparkTip(e, spark.getBoundingClientRect());
    if (html) showTip(html, e);
    else hideTip();
  });
  spark.addEventListener("mouseleave", hideTip);
}

/** The sparklines' tooltip at the mouse: the token, and its surprisal or the hovered layer's norm.
 * @param {MouseEvent} e @param {DOMRect} r */
function sparkTip(e, r) {
  const b = sparkBg;
  if (!b || !b.n || !view.cur) return "";
  const u = (e.clientX - r.left - b.left) / b.W;
  const t = Math.floor(u * b.n);
  if (u < 0 || u > 1 || t >= b.n) return "";
  const y = e.clientY - r.top;
  const tok = view.tokens[t];
  let html = `<span class="h">token ${t}</span> ${esc(oneLine(tok ? tok.text : ""))}`;
  if (y < b.top) {
    html += `<br>surprisal ${tok && tok.logprob !== null ? fmt(-tok.logprob, 2) : "–"} nats`;
  } else {
    const l = Math.min(b.L - 1, Math.floor((y - b.top) / b.rowH));
    const s = sparkSignal();
    const st = view.stats[s];
    if (st && t < st.n) html += `<br>L${l} ‖${esc(s)}‖ ${fmt(st.norm[t * b.L + l], 1)} · sparsity ${fmt(st.sp[t * b.L + l], 2)}`;
  }
  return html;
}
