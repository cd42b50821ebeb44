// Small DOM and text helpers the panels share.
import { view } from "./state.js";

export const $ = (id) => document.getElementById(id);

export function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

/** A token as the strip shows it: whitespace made visible, line breaks kept. */
export function showTok(s) {
  if (s === "") return "▫";
  return s.replace(/\n/g, "↵\n").replace(/\t/g, "→");
}

/** A token on one line (tooltips, the Token panel). */
export function oneLine(s) {
  return (s === "" ? "▫" : s).replace(/\n/g, "↵").replace(/\t/g, "→");
}

export function fmt(v, d = 3) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
  return v.toFixed(d);
}

export function banner(text, kind = "") {
  const b = $("banner");
  b.textContent = text;
  b.className = `banner ${kind}`;
  b.hidden = !text;
}

/** A row of buttons that acts as a radio group (data-v is each button's value). */
export function segment(el, value, onchange) {
  for (const b of el.querySelectorAll("button")) {
    b.classList.toggle("on", b.dataset.v === value);
    b.onclick = () => onchange(b.dataset.v);
  }
}

export function setSeg(el, value) {
  for (const b of el.querySelectorAll("button")) b.classList.toggle("on", b.dataset.v === value);
}

// ---------------------------------------------------------------------------------------------
// the two session pickers (the session shown, the session to subtract) list sessions the same way
function sessionLabel(s) {
  const title = s.title ? s.title.replace(/\s+/g, " ").slice(0, 60) : "(no prompt)";
  const state = s.status === "complete" ? "" : ` · ${s.status}`;
  const kind = s.chat_only ? "chat-only" : `${s.reducer}`;
  return `${title} — ${s.model || "?"} · ${s.n_frames} tok · ${kind}${state}`;
}

export function fillSelect(sel, sessions, current, exclude) {
  sel.innerHTML = "";
  const byStore = new Map();
  for (const s of sessions) {
    if (exclude && s.key === exclude) continue;
    if (!byStore.has(s.store)) byStore.set(s.store, []);
    byStore.get(s.store).push(s);
  }
  const labels = Object.fromEntries(view.stores.map((x) => [x.id, x.label]));
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
