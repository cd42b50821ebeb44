// @ts-check
// Drawing frames: one grid of layer tiles per signal (or one composite grid), colour mapped in the client.
import { OVERFLOW_PX, isOverflow } from "./overflow.js";

/**
 * How values become colours: the LUT, signed or not, the window and level, sparsity as saturation.
 * @typedef {{lut: Uint8Array, signed: boolean, window: number, level: number, sparsity: boolean, grayscale: boolean}} ColourOpts
 */
/** @typedef {{name: string, title: string, subtitle?: string, signals: string[]}} Grid */
/** @typedef {Grid & {x: number, y: number}} PlacedGrid */
/**
 * Where the tiles are: the grids placed, the tile grid (rows x cols of layers), a tile's values (h x w) and
 * its zoom k (D x E pixels on screen), the whole canvas (width x height).
 * @typedef {object} Layout
 * @property {PlacedGrid[]} grids
 * @property {number} rows
 * @property {number} cols
 * @property {number} layers
 * @property {number} h
 * @property {number} w
 * @property {number} k
 * @property {number} D
 * @property {number} E
 * @property {number} width
 * @property {number} height
 * @property {import("./state.js").Meta} meta
 */
/** @typedef {{values: Record<string, Float32Array | null>, scales: Record<string, Float32Array>, sat: Float32Array | null}} GridData */

/** A canvas's 2D context (a canvas that has none is a bug, said at once).
 * @param {HTMLCanvasElement} canvas @param {CanvasRenderingContext2DSettings} [settings] */
export function context2d(canvas, settings) {
  const ctx = canvas.getContext("2d", settings);
  if (!ctx) throw new Error("no 2D canvas context");
  return ctx;
}

/** @type {Record<string, [number, number, number]>} */
export const CHANNEL_RGB = { resid: [79, 195, 247], attn: [255, 112, 67], mlp: [124, 232, 111] };
const TINT = [255, 183, 77]; // hue for "saturation = sparsity" on the grayscale map
const LABEL_H = 13, COL_GAP = 6, ROW_GAP = 4, TITLE_H = 22, GRID_GAP = 28, PAD = 2;

const clamp01 = (/** @type {number} */ x) => (x < 0 ? 0 : x > 1 ? 1 : x);

/** Colour mapping settings shared by the tiles, the colour bar and the hover readout.
 * @param {{window: number, level: number}} opts @returns {[number, number]} */
export function windowRange(opts) {
  const lo = Math.max(0, opts.level - opts.window / 2);
  const hi = Math.max(lo + 1e-6, opts.level + opts.window / 2);
  return [lo, hi];
}

/** t in [0,1] (LUT position) for a normalised value x. */
/** @param {number} x @param {boolean} signed @param {number} lo @param {number} hi */
export function mapValue(x, signed, lo, hi) {
  const m = clamp01((Math.abs(x) - lo) / (hi - lo));
  return signed ? 0.5 + 0.5 * Math.sign(x) * m : m;
}

/** @param {number} r @param {number} g @param {number} b */
function pack(r, g, b) { return (0xff000000 | (b << 16) | (g << 8) | r) >>> 0; }

export class Renderer {
  /** @param {HTMLCanvasElement} view @param {HTMLCanvasElement} overlay */
  constructor(view, overlay) {
    this.view = view;
    this.overlay = overlay;
    this.ctx = context2d(view, { alpha: false });
    this.octx = context2d(overlay);
    /** @type {{c: HTMLCanvasElement, ctx: CanvasRenderingContext2D, img: ImageData}[]} one offscreen canvas per grid */
    this.off = [];
    /** @type {Layout | null} */
    this.layout = null;
    /** @type {import("./state.js").Hover | null} */
    this.hover = null;
    this.dpr = 1;
  }

  /** Fits the grids' tiles in availW x availH (CSS px).
   * @param {Grid[]} grids @param {number} rows @param {number} cols @param {number} layers @param {number} h @param {number} w
   * @param {number} availW @param {number} availH @param {import("./state.js").Meta} meta */
  setLayout(grids, rows, cols, layers, h, w, availW, availH, meta) {
    const nG = grids.length;
    const fixedW = (cols - 1) * COL_GAP + 2 * PAD, varW = cols * w;
    const fixedH = rows * LABEL_H + (rows - 1) * ROW_GAP + TITLE_H + PAD, varH = rows * h;
    const fit = (/** @type {boolean} */ horizontal) => {
      const kw = horizontal ? (availW - (nG - 1) * GRID_GAP - nG * fixedW) / (nG * varW) : (availW - fixedW) / varW;
      const kh = horizontal ? (availH - fixedH) / varH : (availH - (nG - 1) * GRID_GAP - nG * fixedH) / (nG * varH);
      return Math.min(kw, kh);
    };
    const kH = fit(true), kV = fit(false);
    const horizontal = kH >= kV * 0.9;
    let k = Math.max(horizontal ? kH : kV, 0.75);
    if (k >= 2) k = Math.floor(k); // integer zoom keeps every value pixel the same size
    const D = w * k, E = h * k;
    const gridW = cols * D + (cols - 1) * COL_GAP + 2 * PAD;
    const gridH = rows * (E + LABEL_H) + (rows - 1) * ROW_GAP + TITLE_H + PAD;
    const pos = grids.map((g, i) => ({
      ...g,
      x: horizontal ? i * (gridW + GRID_GAP) : 0,
      y: horizontal ? 0 : i * (gridH + GRID_GAP),
    }));
    const width = Math.ceil(horizontal ? nG * gridW + (nG - 1) * GRID_GAP : gridW);
    const height = Math.ceil(horizontal ? gridH : nG * gridH + (nG - 1) * GRID_GAP);
    this.layout = { grids: pos, rows, cols, layers, h, w, k, D, E, width, height, meta };
    // Tiles are drawn at CSS-pixel resolution (the browser scales them, pixelated); the labels on the
    // overlay are drawn at device resolution so they stay sharp on HiDPI screens.
    const dpr = window.devicePixelRatio || 1;
    this.dpr = dpr;
    this.view.width = width; this.view.height = height;
    this.overlay.width = Math.round(width * dpr); this.overlay.height = Math.round(height * dpr);
    for (const c of [this.view, this.overlay]) { c.style.width = `${width}px`; c.style.height = `${height}px`; }
    this.ctx.imageSmoothingEnabled = false;
    this.off = pos.map(() => {
      const c = document.createElement("canvas");
      c.width = cols * w; c.height = rows * h;
      const ctx = context2d(c);
      return { c, ctx, img: ctx.createImageData(cols * w, rows * h) };
    });
    this.ctx.fillStyle = "#0b0f14";
    this.ctx.fillRect(0, 0, width, height);
    this.drawOverlay();
  }

  /** The top left corner of layer `layer`'s tile in `grid` (CSS px). @param {PlacedGrid} grid @param {number} layer
   * @returns {[number, number]} */
  tileXY(grid, layer) {
    const L = this.layout;
    if (!L) return [0, 0];
    const r = Math.floor(layer / L.cols), c = layer % L.cols;
    return [grid.x + PAD + c * (L.D + COL_GAP), grid.y + TITLE_H + r * (L.E + LABEL_H + ROW_GAP) + LABEL_H];
  }

  /**
   * Draw one frame. data[g] = {values: {signal: Float32Array|null}, scales: {signal: Float32Array}, sat: Float32Array|null}
   * @param {GridData[]} data @param {ColourOpts} opts
   */
  draw(data, opts) {
    const L = this.layout;
    if (!L) return;
    const [lo, hi] = windowRange(opts);
    const lut32 = new Uint32Array(256);
    for (let i = 0; i < 256; i++) lut32[i] = pack(opts.lut[3 * i], opts.lut[3 * i + 1], opts.lut[3 * i + 2]);
    const per = L.h * L.w, W = L.cols * L.w;
    const ctx = this.ctx;
    ctx.fillStyle = "#0b0f14";
    ctx.fillRect(0, 0, L.width, L.height);
    L.grids.forEach((g, gi) => {
      const d = data[gi];
      const { ctx: octx, img, c } = this.off[gi];
      const px = new Uint32Array(img.data.buffer);
      px.fill(0xff161b22);
      const composite = g.signals.length > 1;
      for (let l = 0; l < L.layers; l++) {
        const r0 = Math.floor(l / L.cols) * L.h, c0 = (l % L.cols) * L.w;
        if (composite) {
          for (let i = 0; i < per; i++) {
            let R = 0, G = 0, B = 0, over = false;
            for (const s of g.signals) {
              const v = d.values[s];
              if (!v) continue;
              if (isOverflow(v[l * per + i])) over = true;
              const m = clamp01((Math.abs(v[l * per + i] / d.scales[s][l]) - lo) / (hi - lo)) || 0;
              const col = CHANNEL_RGB[s];
              R += col[0] * m; G += col[1] * m; B += col[2] * m;
            }
            const y = r0 + Math.floor(i / L.w), x = c0 + (i % L.w);
            px[y * W + x] = over ? OVERFLOW_PX : pack(Math.min(255, R) | 0, Math.min(255, G) | 0, Math.min(255, B) | 0);
          }
          continue;
        }
        const s = g.signals[0];
        const v = d.values[s];
        if (!v) continue;
        const inv = 1 / (d.scales[s][l] || 1);
        /** @type {Uint32Array} */
        let lut = lut32;
        if (opts.sparsity && d.sat) {
          lut = tinted(opts.lut, d.sat[l], opts.grayscale);
        }
        const off = l * per;
        for (let y = 0; y < L.h; y++) {
          const row = (r0 + y) * W + c0, src = off + y * L.w;
          for (let x = 0; x < L.w; x++) {
            let val = v[src + x];
            if (val !== val) val = 0; // NaN counts as 0, as in llmri.colormaps
            if (isOverflow(val)) { px[row + x] = OVERFLOW_PX; continue; } // not the brightest value: overflow
            const t = mapValue(val * inv, opts.signed, lo, hi);
            px[row + x] = lut[(t * 255 + 0.5) | 0];
          }
        }
      }
      octx.putImageData(img, 0, 0);
      ctx.imageSmoothingEnabled = false;
      for (let l = 0; l < L.layers; l++) {
        const [dx, dy] = this.tileXY(g, l);
        ctx.drawImage(c, (l % L.cols) * L.w, Math.floor(l / L.cols) * L.h, L.w, L.h, dx, dy, L.D, L.E);
      }
    });
  }

  drawOverlay() {
    const L = this.layout;
    if (!L) return;
    const o = this.octx;
    o.setTransform(this.dpr || 1, 0, 0, this.dpr || 1, 0, 0);
    o.clearRect(0, 0, L.width, L.height);
    o.textBaseline = "bottom";
    for (const g of L.grids) {
      o.font = "600 13px system-ui, sans-serif";
      o.fillStyle = "#d5dde7";
      o.fillText(g.title, g.x + PAD, g.y + 16);
      if (g.signals.length > 1) {
        let x = g.x + PAD + o.measureText(g.title).width + 14;
        o.font = "11px system-ui, sans-serif";
        for (const s of g.signals) {
          const [r, gg, b] = CHANNEL_RGB[s];
          o.fillStyle = `rgb(${r},${gg},${b})`;
          o.fillRect(x, 6, 10, 10);
          o.fillStyle = "#9aa7b6";
          o.fillText(s, x + 14, g.y + 16);
          x += 22 + o.measureText(s).width;
        }
      } else if (g.subtitle) {
        o.font = "11px system-ui, sans-serif";
        o.fillStyle = "#7d8a9b";
        o.fillText(g.subtitle, g.x + PAD + o.measureText(g.title).width + 10 + 8, g.y + 16);
      }
      o.font = "10px ui-monospace, Menlo, monospace";
      for (let l = 0; l < L.layers; l++) {
        const [dx, dy] = this.tileXY(g, l);
        o.fillStyle = this.hover && this.hover.layer === l ? "#4fc3f7" : "#6f7f93";
        o.fillText(`L${l}`, dx, dy - 1);
      }
    }
    const hv = this.hover;
    if (hv) {
      for (const g of L.grids) {
        const [dx, dy] = this.tileXY(g, hv.layer);
        const sx = dx + hv.x * L.k, sy = dy + hv.y * L.k;
        o.strokeStyle = g === L.grids[hv.grid] ? "#ffffff" : "#ffb74d";
        o.lineWidth = 1.5;
        o.strokeRect(sx - 1, sy - 1, Math.max(L.k, 1) + 2, Math.max(L.k, 1) + 2);
        o.strokeStyle = "#4fc3f7aa";
        o.lineWidth = 1;
        o.strokeRect(dx - 1.5, dy - 1.5, L.D + 3, L.E + 3);
      }
    }
  }

  /** @param {import("./state.js").Hover | null} h */
  setHover(h) {
    const same = h && this.hover && h.grid === this.hover.grid && h.layer === this.hover.layer && h.x === this.hover.x && h.y === this.hover.y;
    if (same || (!h && !this.hover)) return;
    this.hover = h;
    this.drawOverlay();
  }

  /** The frame as the user sees it (tiles + labels), as a PNG blob. */
  snapshot() {
    const c = document.createElement("canvas");
    c.width = this.overlay.width; c.height = this.overlay.height;
    const ctx = context2d(c);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(this.view, 0, 0, c.width, c.height);
    const hover = this.hover;
    this.hover = null; // no hover outline in the picture
    this.drawOverlay();
    ctx.drawImage(this.overlay, 0, 0);
    this.hover = hover;
    this.drawOverlay();
    return /** @type {Promise<Blob | null>} */ (new Promise((resolve) => c.toBlob(resolve, "image/png")));
  }

  /** Canvas CSS coordinates -> {grid, layer, x, y} or null. @param {number} cx @param {number} cy
   * @returns {import("./state.js").Hover | null} */
  hit(cx, cy) {
    const L = this.layout;
    if (!L) return null;
    for (let gi = 0; gi < L.grids.length; gi++) {
      const g = L.grids[gi];
      for (let l = 0; l < L.layers; l++) {
        const [dx, dy] = this.tileXY(g, l);
        if (cx >= dx && cx < dx + L.D && cy >= dy && cy < dy + L.E) {
          return { grid: gi, layer: l, x: Math.floor((cx - dx) / L.k), y: Math.floor((cy - dy) / L.k) };
        }
      }
    }
    return null;
  }
}

/** @type {Map<string, Uint32Array>} */
const tintCache = new Map();
/** The LUT with saturation scaled by sparsity s in [0,1]: dense tiles grey, sparse tiles fully coloured.
 * @param {Uint8Array} lut @param {number} s @param {boolean} grayscale */
function tinted(lut, s, grayscale) {
  const q = Math.round(clamp01(s) * 32);
  const key = `${q}|${grayscale}|${lut[0]},${lut[384]},${lut[765]}`;
  let out = tintCache.get(key);
  if (out) return out;
  const a = q / 32;
  out = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    const r = lut[3 * i], g = lut[3 * i + 1], b = lut[3 * i + 2];
    const y = 0.299 * r + 0.587 * g + 0.114 * b;
    let cr = r, cg = g, cb = b;
    if (grayscale) { cr = (TINT[0] * y) / 255; cg = (TINT[1] * y) / 255; cb = (TINT[2] * y) / 255; }
    out[i] = pack((y + (cr - y) * a) | 0, (y + (cg - y) * a) | 0, (y + (cb - y) * a) | 0);
  }
  if (tintCache.size > 512) tintCache.clear();
  tintCache.set(key, out);
  return out;
}

/** Horizontal colour bar with tick values.
 * @param {HTMLCanvasElement} canvas @param {Uint8Array} lut @param {ColourOpts} opts @param {string} label @param {boolean} composite */
export function drawColorbar(canvas, lut, opts, label, composite, unit = 1) {
  const ctx = context2d(canvas);
  const W = canvas.clientWidth || 260, H = canvas.clientHeight || 46, bh = 14;
  const dpr = window.devicePixelRatio || 1;
  if (canvas.width !== Math.round(W * dpr)) { canvas.width = Math.round(W * dpr); canvas.height = Math.round(H * dpr); }
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, W, H);
  const [lo, hi] = windowRange(opts);
  if (composite) {
    const chans = Object.entries(CHANNEL_RGB);
    chans.forEach(([, [r, g, b]], i) => {
      const grad = ctx.createLinearGradient(0, 0, W, 0);
      grad.addColorStop(0, "#000");
      grad.addColorStop(1, `rgb(${r},${g},${b})`);
      ctx.fillStyle = grad;
      ctx.fillRect(0, i * 5, W, 4);
    });
  } else {
    for (let x = 0; x < W; x++) {
      const i = Math.round((x / (W - 1)) * 255);
      ctx.fillStyle = `rgb(${lut[3 * i]},${lut[3 * i + 1]},${lut[3 * i + 2]})`;
      ctx.fillRect(x, 0, 1, bh);
    }
  }
  ctx.fillStyle = "#9aa7b6";
  ctx.font = "10px ui-monospace, Menlo, monospace";
  ctx.textBaseline = "top";
  const f = (/** @type {number} */ u) => { const v = u * unit; return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2); };
  /** @type {[number, string][]} */
  const ticks = opts.signed && !composite ? [[0, `−${f(hi)}`], [0.5, "0"], [1, `+${f(hi)}`]] : [[0, `|${f(lo)}|`], [1, `|${f(hi)}|`]];
  if (opts.signed && !composite && lo > 0) ticks.splice(1, 0, [0.5 - 0.5 * 0.02, ""]);
  for (const [p, text] of ticks) {
    const x = Math.round(p * (W - 1));
    ctx.fillRect(x, bh, 1, 4);
    const tw = ctx.measureText(text).width;
    ctx.fillText(text, Math.min(Math.max(0, x - tw / 2), W - tw), bh + 5);
  }
  ctx.fillStyle = "#7d8a9b";
  ctx.font = "10px system-ui, sans-serif";
  ctx.fillText(label, 0, bh + 19);
}
