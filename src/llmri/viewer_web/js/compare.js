// @ts-check
// Compare: draw this frame minus the previous token's, or minus the same frame of another session.
import { FrameSource, getJSON, sessionUrl } from "./api.js";
import { view } from "./state.js";
import { redraw, setCmap } from "./tiles.js";
import { $, errorText, fillSelect, segment, setSeg } from "./ui.js";

let prevCmap = "grayscale"; // the colour map to go back to when the diff is turned off

/** @param {string} text */
function say(text, kind = "") {
  const msg = $("diff-msg");
  msg.textContent = text;
  msg.className = kind ? `msg ${kind}` : "msg";
}

/** "off" | "prev" (this frame minus the previous token's) | "session" (minus another session's frame). @param {string} mode */
export async function setDiff(mode) {
  say("");
  if (mode === view.diff && mode !== "session") return;
  if (mode !== "off" && view.diff === "off") prevCmap = view.cmap;
  view.diff = mode;
  setSeg($("diff-mode"), mode);
  $("diff-session").hidden = mode !== "session";
  if (mode !== "session") { view.diffSrc = null; view.diffSummary = null; }
  if (mode === "off") {
    setCmap(prevCmap);
  } else {
    setCmap("diverging");
    if (mode === "prev") say("showing frame t − frame t−1", "ok");
  }
  if (mode === "session") {
    await pickDiffSession();
    return;
  }
  redraw();
}

/** "− session": subtract the most alike other session (same model and reducer), or say there is none. */
async function pickDiffSession() {
  const cur = view.cur;
  if (!cur) return;
  const select = $("diff-session", HTMLSelectElement);
  fillSelect(select, view.sessions, null, cur.summary.key);
  const others = view.sessions.filter((s) => s.key !== cur.summary.key);
  if (!others.length) {
    say("no other session to compare with", "error");
    view.diff = "off";
    setSeg($("diff-mode"), "off");
    $("diff-session").hidden = true;
    setCmap(prevCmap);
    return;
  }
  const base = baselineOf(cur.summary); // a paired run: its baseline first
  const pick = (base && base.key !== cur.summary.key ? base : null) ||
    others.find((s) => s.model === cur.summary.model && s.reducer === cur.summary.reducer && !s.chat_only) || others[0];
  select.value = pick.key;
  await chooseDiffSession(pick.key);
}

/** The session `s` names as its baseline (meta.baseline: a re-run, steered or patched run), in its own store
 * first; null where it names none or it is not listed. @param {import("./state.js").Summary} s */
export function baselineOf(s) {
  if (!s.baseline) return null;
  const same = view.sessions.find((x) => x.store === s.store && x.id === s.baseline);
  return same || view.sessions.find((x) => x.id === s.baseline) || null;
}

/** @param {string} key */
async function chooseDiffSession(key) {
  const other = view.sessions.find((s) => s.key === key);
  if (!view.cur || !other) return;
  try {
    // the server decides whether the two can be diffed (a 409 says why not) and how many frames they share
    const res = await getJSON(`/api/compare?a=${encodeURIComponent(view.cur.summary.key)}&b=${encodeURIComponent(key)}`);
    const detail = await getJSON(sessionUrl(other));
    view.diffSummary = detail.summary;
    view.diffSrc = new FrameSource(detail.summary, detail.meta);
    say(`this − “${(other.title || other.id).slice(0, 40)}” · ${res.n_frames} frames in common`, "ok");
  } catch (e) {
    view.diffSrc = null;
    view.diffSummary = null;
    say(errorText(e), "error");
  }
  redraw();
}

export function wireCompare() {
  segment($("diff-mode"), view.diff, (v) => setDiff(v));
  const select = $("diff-session", HTMLSelectElement);
  select.onchange = () => chooseDiffSession(select.value);
}
