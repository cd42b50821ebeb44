// @ts-check
// Small DOM and text helpers the panels share.
import { view } from "./state.js";

/**
 * The element with id `id`, of class `kind` (HTMLElement unless said): one the page lacks is a bug, said at once.
 * @template {HTMLElement} [E=HTMLElement]
 * @param {string} id
 * @param {{new (): E, prototype: E}} [kind]
 * @returns {E}
 */
export function $(id, kind) {
  const el = document.getElementById(id);
  const want = kind || HTMLElement;
  if (!(el instanceof want)) throw new Error(`#${id}: no such ${want.name} on the page`);
  return /** @type {E} */ (el);
}

/** The data-* attribute `key` of an event's target (event delegation), if the target is an element. @param {Event} e @param {string} key */
export function dataOf(e, key) {
  return e.target instanceof HTMLElement ? e.target.dataset[key] : undefined;
}

/** @type {Record<string, string>} */
const ENTITIES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

/** Text made safe for innerHTML. @param {unknown} s */
export function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ENTITIES[c] || c);
}

/** A token as the strip shows it: whitespace made visible, line breaks kept. @param {string} s */
export function showTok(s) {
  if (s === "") return "▫";
  return s.replace(/\n/g, "↵\n").replace(/\t/g, "→");
}

/** A token on one line (tooltips, the Token panel). @param {string} s */
export function oneLine(s) {
  return (s === "" ? "▫" : s).replace(/\n/g, "↵").replace(/\t/g, "→");
}

/** A number for a panel: "–" for none, exponent form when very small or large. @param {number | null | undefined} v */
export function fmt(v, d = 3) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
  return v.toFixed(d);
}

/** The page's banner (text "" hides it); kind "error" or "". @param {string} text */
export function banner(text, kind = "") {
  const b = $("banner");
  b.textContent = text;
  b.className = `banner ${kind}`;
  b.hidden = !text;
}

/** A row of buttons that acts as a radio group (data-v is each button's value).
 * @param {HTMLElement} el @param {string} value @param {(v: string) => void} onchange */
export function segment(el, value, onchange) {
  for (const b of el.querySelectorAll("button")) {
    b.classList.toggle("on", b.dataset.v === value);
    b.onclick = () => onchange(b.dataset.v || "");
  }
}

/** @param {HTMLElement} el @param {string} value */
export function setSeg(el, value) {
  for (const b of el.querySelectorAll("button")) b.classList.toggle("on", b.dataset.v === value);
}

// ---------------------------------------------------------------------------------------------
// the two session pickers (the session shown, the session to subtract) list sessions the same way
/** @param {import("./state.js").Summary} s */
function sessionLabel(s) {
  const title = s.title ? s.title.replace(/\s+/g, " ").slice(0, 60) : "(no prompt)";
  const state = s.status === "complete" ? "" : ` · ${s.status}`;
  const kind = s.chat_only ? "chat-only" : `${s.reducer}`;
  return `${originLabel(s)}${title} — ${s.model || "?"} · ${s.n_frames} tok · ${kind}${state}`;
}

/** Where a session came from, as a prefix: a served request's client and time, a study prompt's id.
 * @param {import("./state.js").Summary} s */
export function originLabel(s) {
  const time = (s.created || "").replace("T", " ").replace(/(\.\d+)?\+00:00$/, "").slice(0, 19);
  if (s.served) return `[${s.client || "anonymous"} · ${time}] `;
  if (s.study && s.prompt_id) return `[#${s.prompt_id}] `;
  return "";
}

/** The sessions as options of `sel`, grouped by store where there are several; `exclude`'s left out.
 * @param {HTMLSelectElement} sel @param {import("./state.js").Summary[]} sessions
 * @param {string | null} [current] @param {string | null} [exclude] */
export function fillSelect(sel, sessions, current, exclude) {
  sel.innerHTML = "";
  /** @type {Map<string, import("./state.js").Summary[]>} */
  const byStore = new Map();
  for (const s of sessions) {
    if (exclude && s.key === exclude) continue;
    const list = byStore.get(s.store) || [];
    byStore.set(s.store, list);
    list.push(s);
  }
  const labels = Object.fromEntries(view.stores.map((x) => [x.id, x.label]));
  for (const [store, list] of byStore) {
    /** @type {HTMLElement} */
    let parent = sel;
    if (byStore.size > 1) {
      const group = document.createElement("optgroup");
      group.label = labels[store] || store;
      sel.appendChild(group);
      parent = group;
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

/** What went wrong, in words (a caught value need not be an Error). @param {unknown} e */
export function errorText(e) {
  return e instanceof Error ? e.message : String(e);
}
