// @ts-check
// Values that overflowed the session's frame dtype (llmri.capture.precision): stored as ±inf, drawn in their own colour,
// named "overflow" on hover, and counted in a badge; colour scales leave them out.

/** The colour of an overflowed cell (magenta: in none of the colour maps), as packed RGBA and as CSS. */
export const OVERFLOW_CSS = "#ff00ff";
export const OVERFLOW_PX = 0xffff00ff;

/** Whether v is an overflowed value (±inf; NaN is not: it is "no value", drawn as 0). @param {number} v */
export const isOverflow = (v) => v === Infinity || v === -Infinity;

/** The text of a hovered value: "overflow (+∞)" for an overflowed one, else fmt(v).
 * @param {number} v @param {(v: number) => string} fmt @returns {string} */
export const valueText = (v, fmt) => (isOverflow(v) ? `overflow (${v > 0 ? "+" : "−"}∞)` : fmt(v));

/** a - b where an overflowed side keeps the difference an overflow (inf - inf would be NaN, drawn as 0).
 * @param {number} a @param {number} b */
export const diffValue = (a, b) => (isOverflow(b) ? -b : a - b);

/** |v| for a scale, or null for a value a scale must leave out (±inf, NaN). @param {number} v */
export const finiteAbs = (v) => (Number.isFinite(v) ? Math.abs(v) : null);

/** The badge: how many values of the session overflowed its frame dtype (meta.overflow), hidden when none.
 * @param {HTMLElement} el
 * @param {{overflow?: {total?: number, per_layer?: Record<string, number[]>}, frame_dtype?: string} | null | undefined} meta */
export function showOverflowBadge(el, meta) {
  /** @type {{total?: number, per_layer?: Record<string, number[]>}} */
  const o = (meta && meta.overflow) || {};
  const n = Number(o.total) || 0;
  el.hidden = n === 0;
  if (!n) return;
  const per = Object.entries(o.per_layer || {})
    .map(([s, row]) => /** @type {[string, number]} */ ([s, row.reduce((a, b) => a + b, 0)]))
    .filter(([, c]) => c > 0)
    .map(([s, c]) => `${s} ${c}`)
    .join(", ");
  el.textContent = `${n} overflow`;
  el.title = `${n} values overflowed ${meta?.frame_dtype || "float16"} and are stored as ±inf (${per}); ` +
    "shown in magenta. Capture with frame_dtype bfloat16 or float32 to keep them.";
}
