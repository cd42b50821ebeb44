// Globals the browser client (src/llmri/viewer_web/js) shares with its hosts and its tests; read by tsc only
// (jsconfig.json), never served.

type ViewState = typeof import("../src/llmri/viewer_web/js/state.js").view;
type ChatState = typeof import("../src/llmri/viewer_web/js/state.js").chat;

/** window.llmri: the handle tests, benchmarks and the notebook widget use (main.js builds it, live.js adds `live`). */
interface LlmriHandle {
  ready: boolean;
  state: ViewState;
  live?: ChatState;
  seek(t: number): Promise<number>;
  openSession(key: string, t0?: number): Promise<void>;
  whenDrawn(t: number): Promise<number>;
  readonly drawCount: number;
  readonly drawn: number;
  [more: string]: unknown;
}

/** What the notebook widget gives the viewer in its iframe (llmri/notebook/widget.js). */
interface LlmriHost {
  drawn(t: number): void;
  ready(handle: LlmriHandle): void | Promise<void>;
}

interface Window {
  /** fetch(url, init), answered in the notebook's kernel where the widget installs it (api.js uses it if present). */
  llmriTransport?: (url: string, init?: RequestInit) => Promise<Response>;
  llmri: LlmriHandle;
  llmriHost?: LlmriHost;
}
