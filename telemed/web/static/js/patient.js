/**
 * The patient's page (/join/{consultation_id}#ticket=…): camera check, waiting room,
 * the call and the chat, and the "left" and "ended" endings.
 */

import { CallSession, getLocalMedia } from "./call.js";
import { setText } from "./i18n.js";
import {
  ChatView,
  MediaControls,
  attachLocalVideo,
  attachRemoteVideo,
  bindUnmuteButton,
  byId,
  callStageElements,
  clearVideo,
  fatalKey,
  initLanguage,
  renderCallState,
  show,
  storageGet,
  storageSet,
  toast,
  toastCode,
} from "./ui.js";
import { RecordingControl } from "./recording.js";

/** sessionStorage key prefix: the ticket survives a reload after it left the address bar. */
const TICKET_KEY_PREFIX = "telemed.ticket.";

const el = {
  ...callStageElements(),
  mediaHelp: byId("media-help"),
  mediaHelpText: byId("media-help-text"),
  mediaHelpMobile: byId("media-help-mobile"),
  mediaRetry: /** @type {HTMLButtonElement} */ (byId("media-retry")),
  mediaContinue: /** @type {HTMLButtonElement} */ (byId("media-continue")),
  lobbyStatus: byId("lobby-status"),
  leftPanel: byId("left-panel"),
  rejoin: byId("rejoin"),
};

const media = MediaControls.fromPage(el.localVideo);
const chat = ChatView.fromPage();
const recording = new RecordingControl();

/** @type {CallSession|null} */
let session = null;

// Address ----------------------------------------------------------------------------

/** The consultation id from /join/{id}, or null. */
function consultationIdFromPath() {
  const parts = location.pathname.split("/").filter(Boolean);
  const at = parts.indexOf("join");
  if (at < 0 || !parts[at + 1]) return null;
  try {
    return decodeURIComponent(parts[at + 1]);
  } catch {
    return null;
  }
}

/**
 * The join ticket: from `#ticket=…` (then kept in sessionStorage and removed from the
 * address bar, so it does not linger in history or screenshots), else the kept one.
 */
function takeTicket(consultationId) {
  const key = TICKET_KEY_PREFIX + consultationId;
  const params = new URLSearchParams(location.hash.slice(1));
  const fromAddress = params.get("ticket");
  if (fromAddress) {
    storageSet(sessionStorage, key, fromAddress);
    params.delete("ticket");
    const rest = params.toString();
    history.replaceState(history.state, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
    return fromAddress;
  }
  return storageGet(sessionStorage, key);
}

// Camera and microphone --------------------------------------------------------------

/** The help text for a getUserMedia failure, by the error's name. */
function mediaHelpKey(error) {
  switch (error?.name) {
    case "NotAllowedError":
    case "SecurityError":
    case "PermissionDeniedError":
      return "media.help.denied";
    case "NotFoundError":
    case "OverconstrainedError":
    case "DevicesNotFoundError":
      return "media.help.notFound";
    case "NotReadableError":
    case "TrackStartError":
    case "AbortError":
      return "media.help.busy";
    case "InsecureContextError":
      return "media.help.insecure";
    default:
      return "media.help.other";
  }
}

/** Ask for the camera and microphone, then join; on failure explain and offer choices. */
async function acquireMedia(consultationId, ticket) {
  show(el.mediaHelp, false);
  el.stageOverlay.classList.remove("is-still");
  setText(el.lobbyStatus, "lobby.media");
  el.mediaRetry.disabled = true;
  const { stream, error } = await getLocalMedia();
  el.mediaRetry.disabled = false;
  if (stream) {
    if (error) toast(stream.getVideoTracks().length ? "media.videoOnly" : "media.audioOnly");
    startCall(consultationId, ticket, stream);
    return;
  }
  setText(el.lobbyStatus, "media.help.title");
  el.stageOverlay.classList.add("is-still");
  const key = mediaHelpKey(error);
  setText(el.mediaHelpText, key);
  show(el.mediaHelpMobile, key === "media.help.denied" && matchMedia("(pointer: coarse)").matches);
  show(el.mediaHelp, true);
  el.mediaRetry.focus();
}

// The call ---------------------------------------------------------------------------

/** Connect to signaling; the session joins (and re-joins after reconnects) by itself. */
function startCall(consultationId, ticket, stream) {
  if (session) return;
  show(el.mediaHelp, false);
  el.stageOverlay.classList.remove("is-still");
  attachLocalVideo(el.localVideo, stream);
  media.setStream(stream);
  el.hangup.disabled = false;

  session = new CallSession({ ticket, consultationId, localStream: stream });
  chat.attach(session);
  recording.attach(session);
  session.addEventListener("state", (event) => onCallState(event.detail));
  session.addEventListener("chat", (event) => chat.add(event.detail.message));
  session.addEventListener("remote-stream", (event) => {
    attachRemoteVideo(el.remoteVideo, event.detail.stream, el.unmuteRemote);
  });
  session.addEventListener("remote-gone", () => clearVideo(el.remoteVideo, el.unmuteRemote));
  session.addEventListener("notice", (event) => toastCode(event.detail.code, event.detail.message));
  session.addEventListener("fatal", (event) => showFatal(event.detail.code, event.detail.message));
  session.addEventListener("ended", () => onEnded());
  session.start();
}

/** The waiting-room sentence for each state (the lobby-status element). */
function lobbyKey({ state, reason }) {
  switch (state) {
    case "lobby":
      return reason === "not_started" ? "lobby.notStarted" : "lobby.wait";
    case "connecting":
      return "lobby.connectingDoctor";
    case "reconnecting":
      return "lobby.reconnecting";
    default:
      return "lobby.connecting";
  }
}

function onCallState(detail) {
  renderCallState(el.callState, detail, "patient");
  const { state, reason } = detail;
  const over = state === "ended" || (state === "idle" && (reason === "left" || reason === "error"));
  show(el.stageOverlay, !over && state !== "connected");
  if (!over) setText(el.lobbyStatus, lobbyKey(detail));
  const inCall = Boolean(session?.admitted) && ["connecting", "connected", "reconnecting"].includes(state);
  chat.setEnabled(inCall, !over);
  if (reason === "left") onLeft();
}

function onLeft() {
  media.disable();
  el.hangup.disabled = true;
  clearVideo(el.remoteVideo, el.unmuteRemote);
  attachLocalVideo(el.localVideo, null);
  show(el.leftPanel, true);
  el.rejoin.focus();
}

function onEnded() {
  media.disable();
  el.hangup.disabled = true;
  clearVideo(el.remoteVideo, el.unmuteRemote);
  attachLocalVideo(el.localVideo, null);
  show(el.leftPanel, false);
  show(el.mediaHelp, false);
  show(el.endedPanel, true);
}

function showFatal(code, message) {
  media.disable();
  el.hangup.disabled = true;
  chat.setEnabled(false);
  clearVideo(el.remoteVideo, el.unmuteRemote);
  attachLocalVideo(el.localVideo, null);
  show(el.mediaHelp, false);
  show(el.stageOverlay, false);
  const [key, params] = fatalKey(code, message);
  setText(el.fatalMessage, key, params);
  show(el.fatalPanel, true);
  renderCallState(el.callState, { state: "idle", reason: "error" }, "patient");
}

async function onHangup() {
  if (!session) return;
  el.hangup.disabled = true;
  await session.leave();
}

// Start ------------------------------------------------------------------------------

function init() {
  chat.setEnabled(false, true);
  initLanguage(/** @type {HTMLSelectElement} */ (byId("lang-select")));
  bindUnmuteButton(el.unmuteRemote, el.remoteVideo);
  el.hangup.disabled = true;
  el.hangup.addEventListener("click", onHangup);
  el.rejoin.addEventListener("click", () => location.reload());
  el.fatalReload.addEventListener("click", () => location.reload());
  renderCallState(el.callState, { state: "idle", reason: null }, "patient");

  const consultationId = consultationIdFromPath();
  const ticket = consultationId ? takeTicket(consultationId) : null;
  if (!consultationId || !ticket) {
    showFatal("ticket_missing", "");
    return;
  }
  el.mediaRetry.addEventListener("click", () => acquireMedia(consultationId, ticket));
  el.mediaContinue.addEventListener("click", () => startCall(consultationId, ticket, null));
  acquireMedia(consultationId, ticket);
}

init();
