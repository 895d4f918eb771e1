/**
 * DOM helpers shared by the doctor's and the patient's pages: the language switch,
 * toasts, the call-state badge, video elements, the mute buttons and the chat.
 * User-provided text is only ever set with textContent.
 */

import {
  LANGUAGES,
  applyTranslations,
  formatTime,
  getLanguage,
  has,
  onLanguageChange,
  setLanguage,
  setText,
} from "./i18n.js";

const TOAST_MS = 6000;

/**
 * The element with `id`; throws when the page lacks it (a markup bug, better loud).
 * @param {string} id
 * @returns {HTMLElement}
 */
export function byId(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`telemed: element #${id} is missing`);
  return el;
}

/** The sign-in form every signed-in page has (password, then a TOTP code when asked). */
export function signInElements() {
  return {
    loginView: byId("login-view"),
    loginForm: /** @type {HTMLFormElement} */ (byId("login-form")),
    loginUsername: /** @type {HTMLInputElement} */ (byId("login-username")),
    loginPassword: /** @type {HTMLInputElement} */ (byId("login-password")),
    loginCodeField: byId("login-code-field"),
    loginCode: /** @type {HTMLInputElement} */ (byId("login-code")),
    loginError: byId("login-error"),
    loginSubmit: /** @type {HTMLButtonElement} */ (byId("login-submit")),
  };
}

/**
 * The elements every call page has: the state badge, the stage with both videos, its
 * overlay and end panels, and the hang-up button.
 */
export function callStageElements() {
  return {
    callState: byId("call-state"),
    remoteVideo: /** @type {HTMLVideoElement} */ (byId("remote-video")),
    localVideo: /** @type {HTMLVideoElement} */ (byId("local-video")),
    unmuteRemote: byId("unmute-remote"),
    stageOverlay: byId("stage-overlay"),
    endedPanel: byId("ended-panel"),
    fatalPanel: byId("fatal-panel"),
    fatalMessage: byId("fatal-message"),
    fatalReload: byId("fatal-reload"),
    hangup: /** @type {HTMLButtonElement} */ (byId("hangup")),
  };
}

/** Read from session/local storage without failing where storage is disabled. */
export function storageGet(storage, key) {
  try {
    return storage.getItem(key);
  } catch {
    return null;
  }
}

/** Write to session/local storage (or remove with `null`), ignoring disabled storage. */
export function storageSet(storage, key, value) {
  try {
    if (value === null) storage.removeItem(key);
    else storage.setItem(key, value);
  } catch {
    // Nothing to do: the value just will not survive a reload.
  }
}

/**
 * Translate the page and wire the language `<select>`.
 * @param {HTMLSelectElement} select
 */
export function initLanguage(select) {
  applyTranslations();
  for (const option of select.options) option.disabled = !LANGUAGES.includes(option.value);
  select.value = getLanguage();
  select.addEventListener("change", () => setLanguage(select.value));
}

/**
 * Show a short message that goes away by itself.
 * @param {string} key  i18n key
 * @param {Record<string, string|number>} [params]
 * @param {"info"|"error"} [kind]
 */
export function toast(key, params, kind = "info") {
  const region = document.getElementById("toasts");
  if (!region) return;
  const item = document.createElement("div");
  item.className = `toast toast-${kind}`;
  setText(item, key, params);
  region.append(item);
  setTimeout(() => item.remove(), TOAST_MS);
}

/** A toast for a signaling refusal or local failure, by its code. */
export function toastCode(code, message) {
  const key = `code.${code}`;
  if (has(key)) toast(key, { message: message ?? "" }, "error");
  else toast("code.generic", { message: message || code }, "error");
}

/** The i18n key of a fatal refusal's explanation. */
export function fatalKey(code, message) {
  const key = `code.${code}`;
  return has(key) ? [key, { message: message ?? "" }] : ["code.generic", { message: message || code }];
}

/** Show or hide an element (the `hidden` attribute; the stylesheet makes it win). */
export function show(el, visible) {
  el.hidden = !visible;
}

/**
 * Render the call state on the `call-state` badge: `data-state` for machines, text
 * for people. The text key is the most specific of state.<state>.<reason>,
 * state.<state>.<role>, state.<state>.
 */
export function renderCallState(el, { state, reason }, role) {
  el.dataset.state = state;
  const candidates = [`state.${state}.${reason}`, `state.${state}.${role}`, `state.${state}`];
  setText(el, candidates.find((key) => has(key)) ?? `state.${state}`);
}

/** Show our own camera in a (muted) video element. */
export function attachLocalVideo(video, stream) {
  video.muted = true;
  video.srcObject = stream;
  video.classList.toggle("has-video", Boolean(stream && stream.getVideoTracks().length));
  if (stream) video.play().catch(() => {});
}

/**
 * Play a remote stream with sound. Browsers may refuse unmuted playback without a user
 * gesture: then play muted and offer `unmuteButton` to turn the sound on.
 * @param {HTMLVideoElement} video
 * @param {MediaStream} stream
 * @param {HTMLElement|null} unmuteButton
 */
export async function attachRemoteVideo(video, stream, unmuteButton) {
  if (video.srcObject === stream) return;
  video.srcObject = stream;
  video.muted = false;
  video.classList.add("has-video");
  if (unmuteButton) unmuteButton.hidden = true;
  try {
    await video.play();
  } catch (error) {
    if (video.srcObject !== stream || error?.name === "AbortError") return; // replaced meanwhile
    video.muted = true;
    try {
      await video.play();
      if (unmuteButton) unmuteButton.hidden = false;
    } catch (retryError) {
      console.warn("telemed: the remote video does not play", retryError);
    }
  }
}

/** Wire the "turn the sound on" button that appears when autoplay forced a mute. */
export function bindUnmuteButton(button, video) {
  button.addEventListener("click", () => {
    video.muted = false;
    video.play().catch(() => {});
    button.hidden = true;
  });
}

/** Empty a video element (the remote side went away). */
export function clearVideo(video, unmuteButton) {
  video.srcObject = null;
  video.classList.remove("has-video");
  if (unmuteButton) unmuteButton.hidden = true;
}

/**
 * The microphone and camera buttons: each toggles `enabled` on our local tracks of its
 * kind; `aria-pressed="true"` means "turned off".
 */
export class MediaControls {
  /** @type {MediaStream|null} */
  #stream = null;

  /** The controls of a page built from the shared partial (pages/partials/call-controls.html). */
  static fromPage(localVideo) {
    return new MediaControls(byId("mute-audio"), byId("mute-video"), localVideo);
  }

  constructor(audioButton, videoButton, localVideo) {
    this.buttons = { audio: audioButton, video: videoButton };
    this.localVideo = localVideo;
    for (const kind of ["audio", "video"]) {
      this.buttons[kind].addEventListener("click", () => this.#toggle(kind));
    }
    this.setStream(null);
  }

  /** Control these tracks (null: nothing to control, the buttons are disabled). */
  setStream(stream) {
    this.#stream = stream;
    for (const kind of ["audio", "video"]) {
      const tracks = this.#tracks(kind);
      const button = this.buttons[kind];
      button.disabled = tracks.length === 0;
      button.setAttribute("aria-pressed", String(tracks.length > 0 && !tracks[0].enabled));
    }
  }

  /** Disable both buttons (the call is over). */
  disable() {
    for (const button of Object.values(this.buttons)) button.disabled = true;
  }

  #tracks(kind) {
    if (!this.#stream) return [];
    return kind === "audio" ? this.#stream.getAudioTracks() : this.#stream.getVideoTracks();
  }

  #toggle(kind) {
    const tracks = this.#tracks(kind);
    if (tracks.length === 0) return;
    const enabled = !tracks[0].enabled;
    for (const track of tracks) track.enabled = enabled;
    this.buttons[kind].setAttribute("aria-pressed", String(!enabled));
    if (kind === "video") this.localVideo.classList.toggle("is-off", !enabled);
  }
}

/**
 * The chat panel: a log of messages (sender, time, text) in id order, an input and a
 * send button; Enter sends (the input and the button share a form).
 */
export class ChatView {
  /** @type {import("./call.js").CallSession|null} */
  #session = null;

  /**
   * @param {{log: HTMLElement, form: HTMLFormElement, input: HTMLInputElement,
   *          send: HTMLButtonElement, empty: HTMLElement, note?: HTMLElement}} elements
   */
  constructor(elements) {
    this.el = elements;
    this.el.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.#send();
    });
    onLanguageChange(() => this.#retime());
    this.setEnabled(false);
  }

  /** The chat of a page built from the shared partial (pages/partials/chat.html). */
  static fromPage() {
    return new ChatView({
      log: byId("chat-log"),
      form: /** @type {HTMLFormElement} */ (byId("chat-form")),
      input: /** @type {HTMLInputElement} */ (byId("chat-input")),
      send: /** @type {HTMLButtonElement} */ (byId("chat-send")),
      empty: byId("chat-empty"),
      note: document.getElementById("chat-note") ?? undefined,
    });
  }

  /** Use this session for sending (messages come in through {@link ChatView#add}). */
  attach(session) {
    this.#session = session;
  }

  /**
   * Allow or forbid typing (the server only takes chat from admitted participants).
   * @param {boolean} enabled
   * @param {boolean} [explain]  show the "opens once admitted" note while disabled
   */
  setEnabled(enabled, explain = false) {
    this.el.input.disabled = !enabled;
    this.el.send.disabled = !enabled;
    if (this.el.note) this.el.note.hidden = enabled || !explain;
  }

  /** Remove every message (a new consultation). */
  clear() {
    this.el.log.replaceChildren();
    this.el.empty.hidden = false;
  }

  /**
   * Add one message, keeping the log in id order (history and live messages may interleave).
   * @param {{id: number|string, displayName: string, text: string, at: string, mine: boolean}} message
   */
  add(message) {
    const item = document.createElement("li");
    item.className = message.mine ? "chat-message is-mine" : "chat-message";
    item.dataset.id = String(message.id);

    const meta = document.createElement("div");
    meta.className = "chat-meta";
    const author = document.createElement("span");
    author.className = "chat-author";
    author.textContent = message.displayName;
    meta.append(author);
    if (message.mine) {
      const you = document.createElement("span");
      you.className = "chat-you";
      setText(you, "chat.you");
      meta.append(you);
    }
    const time = document.createElement("time");
    time.className = "chat-time";
    time.dateTime = message.at;
    time.textContent = formatTime(message.at);
    meta.append(time);

    const text = document.createElement("p");
    text.className = "chat-text";
    text.textContent = message.text;
    item.append(meta, text);

    const next = [...this.el.log.children].find((li) => compareIds(li.dataset.id, message.id) > 0);
    this.el.log.insertBefore(item, next ?? null);
    this.el.empty.hidden = true;
    this.el.log.scrollTop = this.el.log.scrollHeight;
  }

  async #send() {
    const text = this.el.input.value.trim();
    if (!text || !this.#session || this.el.send.disabled) return;
    this.el.send.disabled = true;
    try {
      const ack = await this.#session.sendChat(text);
      if (ack.ok) this.el.input.value = "";
    } finally {
      this.el.send.disabled = this.el.input.disabled;
      if (!this.el.input.disabled) this.el.input.focus();
    }
  }

  #retime() {
    for (const time of this.el.log.querySelectorAll("time.chat-time")) {
      time.textContent = formatTime(time.dateTime);
    }
  }
}

/** Order chat ids numerically when they are numbers, else as strings. */
function compareIds(a, b) {
  const x = Number(a);
  const y = Number(b);
  if (Number.isFinite(x) && Number.isFinite(y)) return x - y;
  return String(a).localeCompare(String(b));
}

/**
 * Copy text to the clipboard; falls back to selecting the input for a manual copy.
 * @returns {Promise<boolean>} whether the text was copied
 */
export async function copyText(text, input) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    input.focus();
    input.select();
    return false;
  }
}
