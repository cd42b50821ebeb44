// @ts-check
// Live chat, the panel: its markup, the generation settings, the message bubbles, and picking up the
// conversation of a recorded session. The socket and the run are live.js's; frames are liveframes.js's.
import { chat, view } from "./state.js";
import { seek } from "./timeline.js";
import { $ } from "./ui.js";

const SETTINGS_KEY = "llmri.live.settings";

/** The signal check boxes of the settings. */
const signalBoxes = () => /** @type {NodeListOf<HTMLInputElement>} */ (document.querySelectorAll("input[data-sig]"));

/** @param {string} tag @param {string} [cls] @param {string} [text] */
export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

/** The chat column, left of the tiles; `send`, `stop`, `newChat` and `restore` are live.js's (the socket and the conversation).
 * @param {{send: () => void, stop: () => void, newChat: () => void, restore: (cur: import("./state.js").Current | null) => void}} actions */
export function buildPanel({ send, stop, newChat, restore }) {
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = "/static/live.css";
  document.head.appendChild(link);
  document.body.classList.add("live");
  const panel = el("section", "chat");
  panel.id = "chat";
  panel.setAttribute("aria-label", "live chat");
  panel.innerHTML = `
    <div class="chat-head">
      <h2>Live chat</h2>
      <span id="chat-model" class="chat-model"></span>
      <button id="chat-continue" class="chat-link" title="continue the conversation of the session shown in the viewer" hidden>continue this chat</button>
      <button id="chat-new" class="chat-link" title="start a new conversation">new chat</button>
      <button id="chat-gear" class="icon-btn" title="generation settings" aria-label="settings" aria-expanded="false">⚙</button>
    </div>
    <div id="chat-note" class="chat-note" hidden></div>
    <form id="chat-settings" class="chat-settings" hidden>
      <label>max tokens<input id="cs-max" type="number" min="1" max="2048" step="1"></label>
      <label>temperature<input id="cs-temp" type="number" min="0" max="5" step="0.1" value="0"></label>
      <label>top-p<input id="cs-topp" type="number" min="0.01" max="1" step="0.01" value="1"></label>
      <label>seed<input id="cs-seed" type="number" min="0" step="1" value="0"></label>
      <div class="cs-model-only cs-wide"><span class="cs-lbl">signals</span>
        <label class="check"><input type="checkbox" data-sig="resid" checked>resid</label>
        <label class="check"><input type="checkbox" data-sig="attn" checked>attn</label>
        <label class="check"><input type="checkbox" data-sig="mlp" checked>mlp</label>
      </div>
      <label class="cs-model-only cs-wide">reducer<select id="cs-reducer">
        <option value="random">random projection</option><option value="ipca">incremental PCA</option><option value="neurons">neurons (lossless)</option>
      </select></label>
      <label class="cs-wide">system prompt<textarea id="cs-system" rows="2" placeholder="optional"></textarea></label>
      <p class="cs-wide dim">Signals and reducer are fixed per session; changes apply to the next message.</p>
    </form>
    <div id="chat-log" class="chat-log" aria-live="polite"></div>
    <div id="chat-error" class="chat-error" role="alert" hidden></div>
    <form id="chat-form" class="chat-form">
      <textarea id="chat-input" rows="3" placeholder="Message the model…  (Enter to send, Shift+Enter for a new line)" aria-label="message"></textarea>
      <div class="chat-actions">
        <label class="check" title="move the playhead to each new token as it arrives"><input id="chat-follow" type="checkbox" checked> follow newest token</label>
        <span class="grow"></span>
        <button id="chat-stop" type="button" class="chat-btn stop" hidden>■ Stop</button>
        <button id="chat-send" type="submit" class="chat-btn send" disabled>Send</button>
      </div>
    </form>`;
  const layout = $("layout");
  layout.insertBefore(panel, layout.firstChild);
  emptyLog();
  loadSettings();
  $("chat-gear").onclick = () => {
    const s = $("chat-settings");
    s.hidden = !s.hidden;
    $("chat-gear").setAttribute("aria-expanded", String(!s.hidden));
  };
  $("chat-settings").addEventListener("change", saveSettings);
  $("chat-settings").addEventListener("submit", (e) => e.preventDefault());
  $("chat-new").onclick = newChat;
  $("chat-continue").onclick = () => restore(view.cur);
  setInterval(updateContinue, 700);
  $("chat-form").addEventListener("submit", (e) => { e.preventDefault(); send(); });
  $("chat-stop").onclick = stop;
  const follow = $("chat-follow", HTMLInputElement);
  follow.onchange = () => {
    chat.follow = follow.checked;
    if (chat.follow && chat.run && view.cur && view.src && view.cur.summary.key === chat.run.key) seek(view.src.total - 1);
  };
  const input = $("chat-input", HTMLTextAreaElement);
  input.addEventListener("keydown", (e) => {
    e.stopPropagation(); // typing must not drive the viewer's keyboard shortcuts
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  for (const x of $("chat-settings").querySelectorAll("input, textarea, select")) x.addEventListener("keydown", (e) => e.stopPropagation());
  // the slider, keys and clicks that move the playhead away from the end stop following
  const unfollow = () => setTimeout(() => {
    if (chat.run && view.cur && view.src && view.t < view.src.total - 1 && chat.follow) setFollow(false);
  }, 0);
  $("slider").addEventListener("input", unfollow);
  $("tokens").addEventListener("click", unfollow);
  document.addEventListener("keydown", (e) => { if (["ArrowLeft", "Home"].includes(e.key)) unfollow(); });
}

/** @param {boolean} on */
export function setFollow(on) {
  chat.follow = on;
  $("chat-follow", HTMLInputElement).checked = on;
}

/** @param {string} id */
const field = (id) => $(id, HTMLInputElement);

/** The server's defaults (its hello) in the fields this browser kept no value for.
 * @param {{max_new_tokens: number, temperature: number, top_p: number, seed: number} | undefined} d */
export function applyDefaults(d) {
  if (!d) return;
  if (!field("cs-max").value) field("cs-max").value = String(d.max_new_tokens);
}

function loadSettings() {
  /** @type {Record<string, unknown>} what saveSettings kept (this browser's, perhaps from an older page) */
  let s = {};
  try { s = JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}"); } catch { s = {}; }
  if (s.max_new_tokens) field("cs-max").value = String(s.max_new_tokens);
  if (s.temperature !== undefined) field("cs-temp").value = String(s.temperature);
  if (s.top_p !== undefined) field("cs-topp").value = String(s.top_p);
  if (s.seed !== undefined) field("cs-seed").value = String(s.seed);
  if (s.reducer) $("cs-reducer", HTMLSelectElement).value = String(s.reducer);
  if (s.system !== undefined) $("cs-system", HTMLTextAreaElement).value = String(s.system);
  const signals = s.signals;
  if (Array.isArray(signals)) for (const b of signalBoxes()) b.checked = signals.includes(b.dataset.sig);
}

/** The generation settings the next message is sent with. */
export function settings() {
  return {
    max_new_tokens: Number(field("cs-max").value) || (chat.hello?.defaults?.max_new_tokens ?? 128),
    temperature: Number(field("cs-temp").value) || 0,
    top_p: Number(field("cs-topp").value) || 1,
    seed: Number(field("cs-seed").value) || 0,
    signals: Array.from(signalBoxes()).filter((b) => b.checked && !b.disabled).map((b) => b.dataset.sig || ""),
    reducer: $("cs-reducer", HTMLSelectElement).value,
    conversation: chat.conversation,
    turn: chat.turn,
  };
}

function saveSettings() {
  const s = { ...settings(), system: $("cs-system", HTMLTextAreaElement).value };
  try { localStorage.setItem(SETTINGS_KEY, JSON.stringify(s)); } catch { /* private mode */ }
}

export function emptyLog() {
  const log = $("chat-log");
  log.innerHTML = "";
  const hint = el("div", "chat-empty");
  hint.innerHTML = `<b>Ask the model something.</b><br>Its answer streams in token by token while each token's
    activations light up on the left; every answer is saved as a session you can scrub afterwards.`;
  log.appendChild(hint);
}

/** A part of a message's bubble: ".who", ".body" or ".meta" (see bubble). @param {HTMLElement} b @param {string} cls */
export function partOf(b, cls) {
  const part = b.querySelector(cls);
  if (!(part instanceof HTMLElement)) throw new Error(`a chat bubble without ${cls}`);
  return part;
}

/** A message's bubble at the end of the log. @param {string} role @param {string} text @param {string} [who] */
export function bubble(role, text, who) {
  const log = $("chat-log");
  const hint = log.querySelector(".chat-empty");
  if (hint) hint.remove();
  const b = el("div", `chat-msg ${role}`);
  const head = el("div", "who", who || (role === "user" ? "you" : role));
  const body = el("div", "body", text);
  const meta = el("div", "meta");
  b.append(head, body, meta);
  log.appendChild(b);
  log.scrollTop = log.scrollHeight;
  return b;
}

/** @param {string} msg "" hides the error box */
export function showError(msg) {
  const e = $("chat-error");
  e.textContent = msg || "";
  e.hidden = !msg;
}

/** @param {boolean} busy */
export function setBusy(busy) {
  const sendButton = $("chat-send", HTMLButtonElement);
  $("chat-stop").hidden = !busy;
  sendButton.hidden = busy;
  sendButton.disabled = busy || !chat.ws || chat.ws.readyState !== 1;
}

export function updateContinue() {
  const cur = view.cur;
  const messages = cur && cur.meta.messages;
  const can = !!cur && !chat.run && !chat.pendingSend && view.tokens.length > 0 && cur.summary.status !== "recording" &&
    Array.isArray(messages) && messages.length > 0 && chat.shownKey !== cur.summary.key &&
    (!!cur.meta.chat_only === (chat.hello && chat.hello.mode === "chat-only"));
  $("chat-continue").hidden = !can;
}

/** The panel for the server's mode: a model (with signals to choose) or chat-only (an OpenAI-compatible URL).
 * @param {import("./state.js").Hello} h */
export function describeMode(h) {
  const chatOnly = h.mode === "chat-only";
  const name = String(h.model || "model").split("/").pop(); // servers may name a model by its file path
  $("chat-model").textContent = chatOnly ? `${name} · chat-only` : `${name} · ${h.n_layers || "?"} layers`;
  $("chat-model").title = chatOnly ? `OpenAI-compatible server ${h.url}` : `${h.model} (${h.backend} backend)`;
  for (const x of document.querySelectorAll(".cs-model-only")) if (x instanceof HTMLElement) x.hidden = chatOnly;
  for (const b of signalBoxes()) {
    b.disabled = !chatOnly && !(h.signals || []).includes(b.dataset.sig || "");
  }
  const note = $("chat-note");
  note.hidden = !chatOnly;
  if (chatOnly) {
    note.innerHTML = "";
    note.append(
      el("b", "", "Chat-only mode: no activations. "),
      document.createTextNode(`Answers come from ${h.url}; the frames are placeholders, but each token's probability, ` +
        "entropy and top alternatives show in the timeline and the Token panel."),
    );
  }
  $("chat-input", HTMLTextAreaElement).placeholder = `Message ${name}…  (Enter to send, Shift+Enter for a new line)`;
}
