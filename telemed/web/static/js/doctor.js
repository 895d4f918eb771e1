/**
 * The doctor's console (/doctor): sign-in, today's appointments, and the call with
 * the waiting room, the patient link and the chat.
 */

import {
  ApiError,
  clearProblem,
  listAppointments,
  login,
  problemCodeOf,
  showProblem,
  startConsultation,
} from "./api.js";
import { CallSession, getLocalMedia, stopStream } from "./call.js";
import { formatDate, formatTime, onLanguageChange, setAttrText, setText } from "./i18n.js";
import {
  ChatView,
  MediaControls,
  attachLocalVideo,
  attachRemoteVideo,
  bindUnmuteButton,
  byId,
  callStageElements,
  clearVideo,
  copyText,
  fatalKey,
  initLanguage,
  renderCallState,
  show,
  signInElements,
  storageGet,
  storageSet,
  toast,
  toastCode,
} from "./ui.js";
import { PageSession } from "./session.js";
import { NotificationBell } from "./notifications.js";
import { RecordingControl } from "./recording.js";
import { openClinical } from "./clinical.js";
import { onTokenRenewed } from "./stepup.js";
import { SecurityPanel } from "./security.js";

/** The sign-in of this page (its tokens in sessionStorage). */
const signIn = new PageSession("doctor");
/** The consultation in progress, so that a reload of the console goes straight back to it. */
const ACTIVE_KEY = "telemed.doctor.active";
const RESUMABLE = new Set(["waiting", "in_progress"]);
const STARTABLE = new Set(["scheduled", "waiting", "in_progress"]);

const el = {
  ...callStageElements(),
  logout: byId("logout"),
  securityOpen: byId("security-open"),
  securityView: byId("security-view"),
  securityClose: byId("security-close"),
  ...signInElements(),
  listView: byId("list-view"),
  listDate: byId("list-date"),
  listError: byId("list-error"),
  listLoading: byId("list-loading"),
  listEmpty: byId("list-empty"),
  refresh: /** @type {HTMLButtonElement} */ (byId("refresh")),
  appointments: byId("appointments"),
  callView: byId("call-view"),
  callTitle: byId("call-title"),
  stageMessage: byId("stage-message"),
  backToList: byId("back-to-list"),
  fatalBack: byId("fatal-back"),
  patientLink: /** @type {HTMLInputElement} */ (byId("patient-link")),
  copyLink: byId("copy-link"),
  waitingSummary: byId("waiting-summary"),
  waitingEmpty: byId("waiting-empty"),
  waitingList: byId("waiting-list"),
};

const media = MediaControls.fromPage(el.localVideo);
const chat = ChatView.fromPage();
const recording = new RecordingControl();

/** Everything about the page's current situation. */
const page = {
  /** The access token: the sign-in's own, kept in sessionStorage. */
  get token() {
    return signIn.token;
  },
  /** @type {Array<Record<string, string>>} */
  appointments: [],
  /** @type {CallSession|null} */
  session: null,
  /** @type {MediaStream|null} */
  localStream: null,
  starting: false,
};

/** The unread notifications and their live stream, while someone is signed in. */
const bell = new NotificationBell(() => page.token);

// Views ------------------------------------------------------------------------------

/** @param {"login"|"list"|"call"|"security"} name */
function showView(name) {
  show(el.loginView, name === "login");
  show(el.listView, name === "list");
  show(el.callView, name === "call");
  show(el.securityView, name === "security");
  show(el.logout, name !== "login");
  // Not during a call: the panel would hide the call without ending it.
  show(el.securityOpen, name === "list");
}

// Token ------------------------------------------------------------------------------

/** Forget the token and go back to the sign-in form, optionally saying why. */
function signOut(reasonKey) {
  bell.stop();
  closeCall();
  signIn.end();
  storageSet(sessionStorage, ACTIVE_KEY, null);
  show(el.loginCodeField, false);
  el.loginCode.value = "";
  page.appointments = [];
  el.appointments.replaceChildren();
  if (reasonKey) showProblem(el.loginError, new ApiError({ status: 401 }), reasonKey);
  else clearProblem(el.loginError);
  showView("login");
  el.loginUsername.focus();
}

// Sign-in ----------------------------------------------------------------------------

async function onLoginSubmit(event) {
  event.preventDefault();
  const username = el.loginUsername.value.trim();
  const password = el.loginPassword.value;
  if (!username || !password) {
    (username ? el.loginPassword : el.loginUsername).focus();
    return;
  }
  // The code field appears once the server said the account has a second factor.
  const asksCode = !el.loginCodeField.hidden;
  const code = el.loginCode.value.replace(/\s+/g, "");
  if (asksCode && !code) {
    el.loginCode.focus();
    return;
  }
  clearProblem(el.loginError);
  el.loginSubmit.disabled = true;
  setText(el.loginSubmit, "login.busy");
  try {
    const answer = await login(username, password, asksCode ? code : undefined);
    signIn.signedIn(answer);
    el.loginPassword.value = "";
    el.loginCode.value = "";
    show(el.loginCodeField, false);
    await loadAppointments();
  } catch (error) {
    const problem = problemCodeOf(error);
    if (problem === "totp-required") {
      show(el.loginCodeField, true);
      showProblem(el.loginError, error, "login.codeNeeded");
      el.loginCode.focus();
      return;
    }
    const key =
      problem === "account-locked"
        ? "login.locked"
        : error instanceof ApiError && error.status === 401
          ? "login.failed"
          : undefined;
    showProblem(el.loginError, error, key);
    el.loginCode.value = "";
  } finally {
    el.loginSubmit.disabled = false;
    setText(el.loginSubmit, "login.submit");
  }
}

// Appointments -----------------------------------------------------------------------

async function loadAppointments() {
  showView("list");
  bell.start();
  el.listDate.textContent = formatDate(new Date());
  clearProblem(el.listError);
  show(el.listLoading, page.appointments.length === 0);
  el.refresh.disabled = true;
  try {
    page.appointments = await listAppointments(page.token);
  } catch (error) {
    if (error instanceof ApiError && error.unauthorized) {
      signOut("login.expired");
      return;
    }
    showProblem(el.listError, error);
    return;
  } finally {
    show(el.listLoading, false);
    el.refresh.disabled = false;
  }
  page.appointments.sort((a, b) => String(a.starts_at).localeCompare(String(b.starts_at)));
  renderAppointments();
  resumeActiveConsultation();
}

function renderAppointments() {
  el.appointments.replaceChildren(...page.appointments.map(renderAppointment));
  show(el.listEmpty, page.appointments.length === 0);
}

/** One row: time, patient, state, and the start/resume button. */
function renderAppointment(appointment) {
  const state = String(appointment.consultation_state ?? "");
  const row = document.createElement("div");
  row.className = "appointment";
  row.setAttribute("role", "row");

  const time = document.createElement("span");
  time.className = "appointment-time";
  time.setAttribute("role", "cell");
  time.textContent = timeRange(appointment);

  const name = document.createElement("span");
  name.className = "appointment-patient";
  name.setAttribute("role", "cell");
  name.textContent = String(appointment.patient_name ?? "");

  const badgeCell = document.createElement("span");
  badgeCell.setAttribute("role", "cell");
  const badge = document.createElement("span");
  badge.className = `badge badge-${state.replace(/[^a-z_]/g, "")}`;
  setText(badge, `appt.state.${state}`);
  badgeCell.append(badge);

  const actionCell = document.createElement("span");
  actionCell.className = "appointment-action";
  actionCell.setAttribute("role", "cell");
  const button = document.createElement("button");
  button.type = "button";
  button.className = RESUMABLE.has(state) ? "btn btn-primary" : "btn btn-secondary";
  button.dataset.testid = "start-consultation";
  button.dataset.consultationId = String(appointment.consultation_id);
  const resume = RESUMABLE.has(state);
  const labelParams = { name: String(appointment.patient_name ?? ""), time: timeRange(appointment) };
  setText(button, resume ? "appt.resume" : "appt.start");
  setAttrText(button, "aria-label", resume ? "appt.resumeAria" : "appt.startAria", labelParams);
  button.disabled = !STARTABLE.has(state) || page.starting;
  button.addEventListener("click", () => beginConsultation(appointment, button));
  actionCell.append(button);

  row.append(time, name, badgeCell, actionCell);
  return row;
}

function timeRange(appointment) {
  const start = formatTime(appointment.starts_at);
  const end = formatTime(appointment.ends_at);
  return end ? `${start}–${end}` : start;
}

/** After a reload during a call, go straight back into it. */
function resumeActiveConsultation() {
  const active = storageGet(sessionStorage, ACTIVE_KEY);
  if (!active || page.session || page.starting) return;
  const appointment = page.appointments.find((a) => String(a.consultation_id) === active);
  if (!appointment || !RESUMABLE.has(String(appointment.consultation_state))) {
    storageSet(sessionStorage, ACTIVE_KEY, null);
    return;
  }
  const button = el.appointments.querySelector(
    `[data-testid="start-consultation"][data-consultation-id="${CSS.escape(active)}"]`,
  );
  beginConsultation(appointment, /** @type {HTMLButtonElement|null} */ (button));
}

// Starting a consultation ------------------------------------------------------------

/**
 * Start (or resume) the consultation of an appointment: the REST call and the camera
 * request run together, then the call view opens.
 */
async function beginConsultation(appointment, button) {
  if (page.starting || page.session) return;
  page.starting = true;
  for (const other of el.appointments.querySelectorAll("button")) other.disabled = true;
  if (button) setText(button, "appt.starting");
  clearProblem(el.listError);
  const consultationId = String(appointment.consultation_id);
  const mediaRequest = getLocalMedia();
  let started;
  try {
    started = await startConsultation(page.token, consultationId);
  } catch (error) {
    page.starting = false;
    stopStream((await mediaRequest).stream);
    storageSet(sessionStorage, ACTIVE_KEY, null);
    if (error instanceof ApiError && error.unauthorized) {
      signOut("login.expired");
      return;
    }
    showProblem(el.listError, error);
    renderAppointments();
    return;
  }
  const { stream, error } = await mediaRequest;
  page.starting = false;
  if (!stream) toast("media.doctorNone", undefined, "error");
  else if (error) toast(stream.getVideoTracks().length ? "media.videoOnly" : "media.audioOnly");
  openCall(appointment, started, stream);
}

/** Show the call view and connect to signaling with the doctor's ticket. */
function openCall(appointment, started, stream) {
  const consultationId = String(started.consultation_id ?? appointment.consultation_id);
  storageSet(sessionStorage, ACTIVE_KEY, consultationId);
  renderAppointments(); // drop the "Starting…" label for when the list comes back
  resetCallView();
  showView("call");
  el.callTitle.textContent = String(appointment.patient_name ?? "");
  el.patientLink.value = started.patient_url ? new URL(String(started.patient_url), location.origin).href : "";
  openClinical(consultationId, page.token);

  page.localStream = stream;
  attachLocalVideo(el.localVideo, stream);
  media.setStream(stream);

  const session = new CallSession({
    ticket: String(started.ticket),
    consultationId,
    localStream: stream,
    // The ticket is short-lived; a long call may outlive it and need it on a reconnect.
    renewTicket: async () => String((await startConsultation(page.token, consultationId)).ticket),
  });
  page.session = session;
  chat.attach(session);
  recording.attach(session);
  session.addEventListener("state", (event) => onCallState(event.detail));
  session.addEventListener("lobby", (event) => renderWaiting(event.detail.waiting));
  session.addEventListener("chat", (event) => chat.add(event.detail.message));
  session.addEventListener("remote-stream", (event) => {
    attachRemoteVideo(el.remoteVideo, event.detail.stream, el.unmuteRemote);
    updateStage();
  });
  session.addEventListener("remote-gone", () => {
    clearVideo(el.remoteVideo, el.unmuteRemote);
    updateStage();
  });
  session.addEventListener("notice", (event) => toastCode(event.detail.code, event.detail.message));
  session.addEventListener("fatal", (event) => onFatal(event.detail));
  session.addEventListener("ended", () => onEnded());
  session.start();
  el.hangup.focus();
}

function resetCallView() {
  chat.clear();
  chat.setEnabled(false);
  renderWaiting([]);
  clearVideo(el.remoteVideo, el.unmuteRemote);
  show(el.endedPanel, false);
  show(el.fatalPanel, false);
  el.hangup.disabled = false;
  renderCallState(el.callState, { state: "idle", reason: null }, "doctor");
  updateStage();
}

/** Leave the call view's resources (camera, socket) behind. */
function closeCall() {
  page.session?.close();
  page.session = null;
  stopStream(page.localStream);
  page.localStream = null;
  attachLocalVideo(el.localVideo, null);
  media.setStream(null);
}

function backToList() {
  closeCall();
  storageSet(sessionStorage, ACTIVE_KEY, null);
  loadAppointments();
}

// Call events ------------------------------------------------------------------------

function onCallState(detail) {
  renderCallState(el.callState, detail, "doctor");
  const live = !["idle", "ended"].includes(detail.state);
  chat.setEnabled(live && Boolean(page.session?.admitted));
  updateStage();
}

/** The message over the remote video while there is no picture to show. */
function updateStage() {
  const state = page.session?.state.state ?? "idle";
  const over = state === "ended" || !el.fatalPanel.hidden;
  show(el.stageOverlay, state !== "connected" && !over);
  const key = {
    idle: "stage.doctor.idle",
    lobby: "stage.doctor.lobby",
    connecting: "stage.doctor.connecting",
    reconnecting: "stage.doctor.reconnecting",
  }[state];
  if (key) setText(el.stageMessage, key);
}

/** The waiting list: a summary for the lobby-status and an admit button per patient. */
function renderWaiting(waiting) {
  const peers = Array.isArray(waiting) ? waiting : [];
  setText(el.waitingSummary, "call.waitingCount", { n: peers.length });
  show(el.waitingEmpty, peers.length === 0);
  el.waitingList.replaceChildren(...peers.map(renderWaitingPeer));
}

function renderWaitingPeer(peer) {
  const item = document.createElement("li");
  item.className = "waiting-item";
  const name = document.createElement("span");
  name.className = "waiting-name";
  name.textContent = String(peer.display_name ?? "");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "btn btn-primary btn-small";
  button.dataset.testid = "admit";
  button.dataset.participantId = String(peer.participant_id);
  setText(button, "call.admit");
  setAttrText(button, "aria-label", "call.admitAria", { name: String(peer.display_name ?? "") });
  button.addEventListener("click", async () => {
    if (!page.session) return;
    button.disabled = true;
    const ack = await page.session.admit(String(peer.participant_id));
    if (!ack.ok) button.disabled = false;
  });
  item.append(name, button);
  return item;
}

function onEnded() {
  storageSet(sessionStorage, ACTIVE_KEY, null);
  media.disable();
  chat.setEnabled(false);
  el.hangup.disabled = true;
  renderWaiting([]);
  clearVideo(el.remoteVideo, el.unmuteRemote);
  attachLocalVideo(el.localVideo, null);
  show(el.endedPanel, true);
  updateStage();
  el.backToList.focus();
}

function onFatal({ code, message }) {
  media.disable();
  chat.setEnabled(false);
  el.hangup.disabled = true;
  clearVideo(el.remoteVideo, el.unmuteRemote);
  attachLocalVideo(el.localVideo, null);
  const [key, params] = fatalKey(code, message);
  setText(el.fatalMessage, key, params);
  show(el.fatalPanel, true);
  updateStage();
}

async function onHangup() {
  if (!page.session) return;
  el.hangup.disabled = true;
  const ack = await page.session.end();
  if (!ack.ok) el.hangup.disabled = false;
}

async function onCopyLink() {
  if (!el.patientLink.value) return;
  const copied = await copyText(el.patientLink.value, el.patientLink);
  if (copied) toast("call.copied");
  else toast("call.copyFailed", undefined, "error");
}

// Start ------------------------------------------------------------------------------

function init() {
  initLanguage(/** @type {HTMLSelectElement} */ (byId("lang-select")));
  bindUnmuteButton(el.unmuteRemote, el.remoteVideo);
  el.loginForm.addEventListener("submit", onLoginSubmit);
  el.logout.addEventListener("click", () => signOut());
  const security = new SecurityPanel(
    () => page.token,
    () => signOut("login.expired"),
  );
  el.securityOpen.addEventListener("click", () => {
    security.reset();
    showView("security");
  });
  el.securityClose.addEventListener("click", () => loadAppointments());
  el.refresh.addEventListener("click", () => loadAppointments());
  el.hangup.addEventListener("click", onHangup);
  el.copyLink.addEventListener("click", onCopyLink);
  el.backToList.addEventListener("click", backToList);
  el.fatalBack.addEventListener("click", backToList);
  el.fatalReload.addEventListener("click", () => location.reload());
  onLanguageChange(() => {
    el.listDate.textContent = formatDate(new Date());
    if (!el.listView.hidden) renderAppointments();
  });

  // A step-up in the clinical panel yields a fresh token: keep it for the whole console.
  onTokenRenewed((token) => {
    signIn.token = token;
  });
  signIn.takeFromFragment();
  if (page.token) loadAppointments();
  else signOut();
}

init();
