// @ts-check
// Live chat's steering panel (llmri/viewer/live/steering.py): a saved direction (llmri view --direction FILE), a
// neuron, a direction made on the spot from two short lists of prompts (llmri.direction), or an SAE feature's
// decoder row (llmri view --sae PATH; the features panel's "steer" fills it in), at some layers with a scale. It steers the next message, and "re-run steered" under an answer asks that answer's question again with
// its own settings and seed, streamed as a new session beside it (paired with it: the viewer compares the two).
import { chat } from "./state.js";
import { el, partOf } from "./livepanel.js";
import { $ } from "./ui.js";

/** A steering request (settings.steer), as the server checks it. @typedef {Record<string, unknown>} Steer */

/** The steering panel, after the settings form; its button beside the settings' gear. */
export function buildSteer() {
  const form = el("form", "chat-settings chat-steer");
  form.id = "chat-steer";
  form.hidden = true;
  form.innerHTML = `
    <label class="cs-wide">steer with<select id="st-kind">
      <option value="">nothing (off)</option><option value="direction">a saved direction</option>
      <option value="neuron">a neuron (one residual dimension)</option><option value="prompts">a direction from two lists of prompts</option>
      <option value="feature">an SAE feature (its decoder row)</option>
    </select></label>
    <label class="st-k st-feature" hidden>SAE<select id="st-sae"></select></label>
    <label class="st-k st-feature" hidden>feature<input id="st-feature" type="number" min="0" step="1" value="0"></label>
    <label class="cs-wide st-k st-direction" hidden>saved direction<select id="st-name"></select></label>
    <label class="st-k st-neuron" hidden>neuron<input id="st-neuron" type="number" min="0" step="1" value="0"></label>
    <label class="cs-wide st-k st-prompts" hidden>prompts with the concept (one a line)<textarea id="st-pos" rows="2" placeholder="I love Paris"></textarea></label>
    <label class="cs-wide st-k st-prompts" hidden>prompts without it<textarea id="st-neg" rows="2" placeholder="I love Rome"></textarea></label>
    <label>layers<input id="st-layers" type="text" value="12" title="e.g. 12, 4,8,12 or 10-14"></label>
    <label>scale <output id="st-scale-out">8</output><input id="st-scale" type="range" min="-64" max="64" step="0.5" value="8"></label>
    <p class="cs-wide dim">Steers the next message (its answer's positions), and “re-run steered” under an answer.</p>`;
  $("chat-settings").after(form);
  const gear = $("chat-gear");
  const button = el("button", "chat-link", "steer");
  button.id = "chat-steer-btn";
  button.title = "steering: a direction, a neuron, or a direction from prompts";
  gear.before(button);
  button.onclick = () => { form.hidden = !form.hidden; };
  form.addEventListener("submit", (e) => e.preventDefault());
  for (const x of form.querySelectorAll("input, textarea, select")) x.addEventListener("keydown", (e) => e.stopPropagation());
  const kind = $("st-kind", HTMLSelectElement);
  kind.onchange = () => {
    for (const x of form.querySelectorAll(".st-k")) if (x instanceof HTMLElement) x.hidden = !x.classList.contains(`st-${kind.value}`);
    button.textContent = kind.value ? "steer ●" : "steer";
  };
  const scale = $("st-scale", HTMLInputElement);
  scale.oninput = () => { $("st-scale-out").textContent = scale.value; };
}

/** What the server's hello says of steering: whether the model's backend steers, the saved directions.
 * @param {import("./state.js").Hello} h */
export function describeSteer(h) {
  $("chat-steer-btn").hidden = !h.steerable;
  if (!h.steerable) $("chat-steer").hidden = true;
  const names = h.directions || [];
  const select = $("st-name", HTMLSelectElement);
  select.innerHTML = "";
  for (const name of names) select.appendChild(Object.assign(document.createElement("option"), { value: name, textContent: name }));
  const saved = $("st-kind", HTMLSelectElement).querySelector('option[value="direction"]');
  if (saved instanceof HTMLOptionElement) saved.disabled = !names.length;
  if (typeof h.d_model === "number") $("st-neuron", HTMLInputElement).max = String(h.d_model - 1);
  const saes = h.saes || [];
  const saeSelect = $("st-sae", HTMLSelectElement);
  saeSelect.innerHTML = "";
  for (const name of saes) saeSelect.appendChild(Object.assign(document.createElement("option"), { value: name, textContent: name }));
  const feature = $("st-kind", HTMLSelectElement).querySelector('option[value="feature"]');
  if (feature instanceof HTMLOptionElement) feature.disabled = !saes.length;
}

/** Whether live chat can steer with SAE `sae`'s features (its engine records that SAE). @param {string} sae */
export function canSteerWith(sae) {
  return !!(chat.hello && chat.hello.steerable && (chat.hello.saes || []).includes(sae));
}

/** The features panel's "steer": the steering panel set to feature `f` of SAE `sae`, at the SAE's layer
 * (or the panel's layers), and shown. @param {string} sae @param {number} f @param {number | null} layer */
export function steerWithFeature(sae, f, layer) {
  if (!canSteerWith(sae)) return;
  const kind = $("st-kind", HTMLSelectElement);
  kind.value = "feature";
  kind.dispatchEvent(new Event("change"));
  $("st-sae", HTMLSelectElement).value = sae;
  $("st-feature", HTMLInputElement).value = String(f);
  if (layer !== null) $("st-layers", HTMLInputElement).value = String(layer);
  $("chat-steer").hidden = false;
}

/** "12", "4,8,12", "10-14" -> layer numbers. @param {string} text */
function parseLayers(text) {
  /** @type {number[]} */
  const out = [];
  for (const part of text.split(",").map((x) => x.trim()).filter(Boolean)) {
    const m = /^(\d+)\s*(?:-\s*(\d+))?$/.exec(part);
    if (!m) throw new Error(`steer: layers “${part}” is not a layer or a range like 10-14`);
    const a = Number(m[1]), b = m[2] === undefined ? a : Number(m[2]);
    for (let l = Math.min(a, b); l <= Math.max(a, b) && out.length <= 64; l++) out.push(l);
  }
  if (!out.length) throw new Error("steer: give the layers to steer at");
  return out;
}

/** The steering the panel says (null: off); throws an Error whose message says what is missing.
 * @returns {Steer | null} */
export function steerSpec() {
  if (!chat.hello || !chat.hello.steerable) return null;
  const kind = $("st-kind", HTMLSelectElement).value;
  if (!kind) return null;
  /** @type {Steer} */
  const spec = { kind, layers: parseLayers($("st-layers", HTMLInputElement).value), scale: Number($("st-scale", HTMLInputElement).value) };
  if (kind === "neuron") spec.neuron = Number($("st-neuron", HTMLInputElement).value) || 0;
  else if (kind === "direction") spec.name = $("st-name", HTMLSelectElement).value;
  else if (kind === "feature") {
    spec.sae = $("st-sae", HTMLSelectElement).value;
    spec.feature = Number($("st-feature", HTMLInputElement).value) || 0;
  } else {
    const lines = (/** @type {string} */ id) => $(id, HTMLTextAreaElement).value.split("\n").map((x) => x.trim()).filter(Boolean);
    spec.positive = lines("st-pos");
    spec.negative = lines("st-neg");
  }
  return spec;
}

/** "re-run steered" under a finished answer. @param {HTMLElement} b its bubble @param {string} key its session
 * @param {(key: string, b: HTMLElement) => void} rerun */
export function addRerun(b, key, rerun) {
  if (!chat.hello || !chat.hello.steerable) return;
  const button = el("button", "chat-link rerun", "re-run steered");
  button.title = "ask this answer's question again with its settings and seed, steered as the steering panel says";
  button.onclick = () => rerun(key, b);
  partOf(b, ".who").appendChild(button);
}

/** The original answer and its steered re-run, side by side. @param {HTMLElement} original @param {HTMLElement} steered */
export function pairBubbles(original, steered) {
  let pair = original.parentElement;
  if (!pair || !pair.classList.contains("chat-pair")) {
    pair = el("div", "chat-pair");
    original.before(pair);
    pair.appendChild(original);
  }
  pair.appendChild(steered);
  steered.classList.add("steered");
}
