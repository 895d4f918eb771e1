/**
 * The clinic's review page (/review): sign-in, search of the clinic's consultations, and
 * one consultation with a player per participant under one timeline control, the event
 * timeline, the medical record and the protocol's integrity check.
 *
 * Time on the page runs from the consultation's start: every segment and event carries
 * `offset_ms` from there (the API's), so the players line up and a reconnect's gap stays
 * a gap. One clock drives both players; a player with no recording at the current time
 * shows the gap.
 */

import { ApiError, apiRequest, clearProblem, login, problemCodeOf, showProblem } from "./api.js";
import { getLanguage, getLocale, onLanguageChange } from "./i18n.js";
import { byId, initLanguage, show, signInElements } from "./ui.js";
import { PageSession } from "./session.js";

/** The sign-in of this page (its tokens in sessionStorage). */
const signIn = new PageSession("review");
const PAGE_SIZE = 20;
const TICK_MS = 100;
// A following player this far off the clock is put back in place (seconds).
const MAX_DRIFT_S = 0.5;
// Media links are renewed this long before they expire (ms).
const RENEW_BEFORE_MS = 60_000;

// Strings -----------------------------------------------------------------------------

const STRINGS = {
  ru: {
    "review.pageTitle": "Просмотр записей — Телемед",
    "review.console": "Просмотр записей клиники",
    "review.logout": "Выйти из системы",
    "review.loginTitle": "Вход для рецензента",
    "review.username": "Имя пользователя",
    "review.password": "Пароль",
    "review.code": "Код из приложения-аутентификатора",
    "review.signIn": "Войти",
    "review.signingIn": "Вход…",
    "review.loginFailed": "Неверное имя пользователя или пароль",
    "review.codeNeeded": "Введите код из приложения-аутентификатора",
    "review.notReviewer": "У этой учётной записи нет доступа к записям клиники",
    "review.sessionOver": "Сеанс завершён, войдите снова",
    "review.searchTitle": "Консультации клиники",
    "review.doctor": "Врач",
    "review.anyDoctor": "Все врачи",
    "review.patient": "Пациент",
    "review.patientHint": "Часть ФИО",
    "review.from": "С даты",
    "review.to": "По дату",
    "review.status": "Статус",
    "review.anyStatus": "Любой",
    "review.recording": "Запись",
    "review.anyRecording": "Не важно",
    "review.withRecording": "Есть запись",
    "review.withoutRecording": "Нет записи",
    "review.find": "Найти",
    "review.when": "Дата и время",
    "review.nothing": "Ничего не найдено",
    "review.total": "Показаны {first}–{last} из {total}",
    "review.totalNone": "Найдено: 0",
    "review.prev": "Назад",
    "review.next": "Далее",
    "review.open": "Открыть",
    "review.yes": "есть",
    "review.no": "нет",
    "review.back": "К списку",
    "review.play": "Воспроизвести",
    "review.pause": "Пауза",
    "review.seek": "Положение на шкале времени",
    "review.timeline": "Хронология",
    "review.chat": "Сообщений в чате: {n}",
    "review.noRecording": "Нет записи в этот момент",
    "review.noSegments": "Участник не записывался",
    "review.integrity": "Целостность протокола",
    "review.allChecks": "Все проверки",
    "review.reverify": "Проверить ещё раз",
    "review.integrity.checking": "Проверка…",
    "review.integrity.ok": "Протокол цел: подпись верна, все файлы совпадают с протоколом",
    "review.integrity.failed": "Нарушена целостность: {n} из {total} проверок не пройдены",
    "review.integrity.none": "Протокол ещё не сформирован",
    "review.integrity.error": "Проверка не выполнена",
    "review.record": "Медицинская запись",
    "review.diagnoses": "Диагнозы",
    "review.prescriptions": "Назначения",
    "review.noNote": "Заключение не подписано",
    "review.withheld": "Медицинская запись и видеозаписи доступны врачам и рецензентам клиники, не администратору",
    "review.none": "Нет",
    "review.primary": "основной",
    "review.note.complaints": "Жалобы",
    "review.note.anamnesis": "Анамнез",
    "review.note.findings": "Объективно",
    "review.note.conclusion": "Заключение",
    "review.note.recommendations": "Рекомендации",
    "review.rx": "{medication}: {dose}; {days} дн.; {quantity}; до {until}",
    "review.meta": "Врач: {doctor} · Пациент: {patient} · Сеанс {session}",
    "check.signature": "Подпись протокола",
    "check.manifest": "Протокол",
    "check.segment": "Запись",
    "check.document": "Документ",
    "check.registered hash": "Хеш протокола в базе данных",
    "role.doctor": "Врач",
    "role.patient": "Пациент",
    "state.scheduled": "Запланирована",
    "state.waiting": "Ожидание пациента",
    "state.in_progress": "Идёт",
    "state.finished": "Завершена",
    "state.cancelled": "Отменена",
    "event.started": "Врач открыл консультацию",
    "event.joined": "{who}: подключение",
    "event.admitted": "{who}: допущен в консультацию",
    "event.left": "{who}: отключение",
    "event.reconnected": "{who}: переподключение",
    "event.chat_message": "{who}: сообщение в чате",
    "event.consent_given": "{who}: согласие на запись",
    "event.consent_declined": "{who}: отказ от записи",
    "event.consent_withdrawn": "{who}: согласие отозвано",
    "event.recording_started": "Запись начата",
    "event.recording_stopped": "Запись остановлена",
    "event.note_finalized": "Заключение подписано",
    "event.prescription_finalized": "Назначение подписано",
    "event.ended": "Консультация завершена",
    "event.cancelled": "Консультация отменена",
    "event.other": "{kind}",
  },
  en: {
    "review.pageTitle": "Recordings review — Telemed",
    "review.console": "Clinic recordings review",
    "review.logout": "Sign out",
    "review.loginTitle": "Reviewer sign-in",
    "review.username": "User name",
    "review.password": "Password",
    "review.code": "Code from the authenticator app",
    "review.signIn": "Sign in",
    "review.signingIn": "Signing in…",
    "review.loginFailed": "Wrong user name or password",
    "review.codeNeeded": "Enter the code from your authenticator app",
    "review.notReviewer": "This account may not review the clinic's recordings",
    "review.sessionOver": "Your session is over, sign in again",
    "review.searchTitle": "The clinic's consultations",
    "review.doctor": "Doctor",
    "review.anyDoctor": "All doctors",
    "review.patient": "Patient",
    "review.patientHint": "Part of the name",
    "review.from": "From",
    "review.to": "To",
    "review.status": "Status",
    "review.anyStatus": "Any",
    "review.recording": "Recording",
    "review.anyRecording": "Either",
    "review.withRecording": "Recorded",
    "review.withoutRecording": "Not recorded",
    "review.find": "Search",
    "review.when": "Date and time",
    "review.nothing": "Nothing found",
    "review.total": "Showing {first}–{last} of {total}",
    "review.totalNone": "Found: 0",
    "review.prev": "Previous",
    "review.next": "Next",
    "review.open": "Open",
    "review.yes": "yes",
    "review.no": "no",
    "review.back": "Back to the list",
    "review.play": "Play",
    "review.pause": "Pause",
    "review.seek": "Position on the timeline",
    "review.timeline": "Timeline",
    "review.chat": "Chat messages: {n}",
    "review.noRecording": "No recording at this moment",
    "review.noSegments": "This participant was not recorded",
    "review.integrity": "Protocol integrity",
    "review.allChecks": "All checks",
    "review.reverify": "Check again",
    "review.integrity.checking": "Checking…",
    "review.integrity.ok": "Protocol intact: the signature is valid and every file matches",
    "review.integrity.failed": "Integrity broken: {n} of {total} checks failed",
    "review.integrity.none": "No protocol has been written yet",
    "review.integrity.error": "The check could not be run",
    "review.record": "Medical record",
    "review.diagnoses": "Diagnoses",
    "review.prescriptions": "Prescriptions",
    "review.noNote": "No signed conclusion",
    "review.withheld": "The medical record and the recordings are for the clinic's doctors and reviewers, not its administrator",
    "review.none": "None",
    "review.primary": "primary",
    "review.note.complaints": "Complaints",
    "review.note.anamnesis": "History",
    "review.note.findings": "Findings",
    "review.note.conclusion": "Conclusion",
    "review.note.recommendations": "Recommendations",
    "review.rx": "{medication}: {dose}; {days} days; {quantity}; until {until}",
    "review.meta": "Doctor: {doctor} · Patient: {patient} · Session {session}",
    "check.signature": "Protocol signature",
    "check.manifest": "Protocol",
    "check.segment": "Recording",
    "check.document": "Document",
    "check.registered hash": "Protocol hash in the database",
    "role.doctor": "Doctor",
    "role.patient": "Patient",
    "state.scheduled": "Scheduled",
    "state.waiting": "Waiting for the patient",
    "state.in_progress": "In progress",
    "state.finished": "Finished",
    "state.cancelled": "Cancelled",
    "event.started": "The doctor opened the consultation",
    "event.joined": "{who}: connected",
    "event.admitted": "{who}: admitted",
    "event.left": "{who}: disconnected",
    "event.reconnected": "{who}: reconnected",
    "event.chat_message": "{who}: chat message",
    "event.consent_given": "{who}: consented to recording",
    "event.consent_declined": "{who}: declined recording",
    "event.consent_withdrawn": "{who}: withdrew consent",
    "event.recording_started": "Recording started",
    "event.recording_stopped": "Recording stopped",
    "event.note_finalized": "Conclusion signed",
    "event.prescription_finalized": "Prescription signed",
    "event.ended": "Consultation ended",
    "event.cancelled": "Consultation cancelled",
    "event.other": "{kind}",
  },
};

/** The page's own string for `key` in the current language (Russian as the fallback). */
function rt(key, params) {
  const template = STRINGS[getLanguage()]?.[key] ?? STRINGS.ru[key] ?? key;
  if (!params) return template;
  return template.replace(/\{(\w+)\}/g, (whole, name) =>
    Object.hasOwn(params, name) ? String(params[name]) : whole,
  );
}

/** Set an element's text to one of the page's strings, re-rendered on a language switch. */
function setRt(el, key, params) {
  el.dataset.rt = key;
  if (params) el.dataset.rtArgs = JSON.stringify(params);
  else delete el.dataset.rtArgs;
  el.textContent = rt(key, params);
}

function applyPageStrings() {
  document.title = rt("review.pageTitle");
  for (const el of document.querySelectorAll("[data-rt]")) {
    const args = el.dataset.rtArgs ? JSON.parse(el.dataset.rtArgs) : undefined;
    el.textContent = rt(el.dataset.rt, args);
  }
  for (const el of document.querySelectorAll("[data-rt-attr]")) {
    const [attr, key] = el.dataset.rtAttr.split("=");
    el.setAttribute(attr, rt(key));
  }
}

function formatClock(ms) {
  const total = Math.max(0, Math.floor(ms / 1000));
  const hours = Math.floor(total / 3600);
  const minutes = String(Math.floor((total % 3600) / 60)).padStart(2, "0");
  const seconds = String(total % 60).padStart(2, "0");
  return hours ? `${hours}:${minutes}:${seconds}` : `${minutes}:${seconds}`;
}

function formatWhen(value) {
  if (!value) return "";
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return "";
  return new Intl.DateTimeFormat(getLocale(), { dateStyle: "medium", timeStyle: "short" }).format(date);
}

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

// Page state --------------------------------------------------------------------------

const el = {
  logout: byId("logout"),
  ...signInElements(),
  searchView: byId("search-view"),
  searchForm: /** @type {HTMLFormElement} */ (byId("search-form")),
  doctor: /** @type {HTMLSelectElement} */ (byId("filter-doctor")),
  searchError: byId("search-error"),
  searchTotal: byId("search-total"),
  searchEmpty: byId("search-empty"),
  results: byId("results"),
  prev: /** @type {HTMLButtonElement} */ (byId("page-prev")),
  next: /** @type {HTMLButtonElement} */ (byId("page-next")),
  detailView: byId("detail-view"),
  detailTitle: byId("detail-title"),
  detailMeta: byId("detail-meta"),
  detailError: byId("detail-error"),
  back: byId("back"),
  players: byId("players"),
  play: /** @type {HTMLButtonElement} */ (byId("play")),
  seek: /** @type {HTMLInputElement} */ (byId("seek")),
  lanes: byId("track-lanes"),
  clock: byId("clock"),
  chatSummary: byId("chat-summary"),
  timeline: byId("timeline"),
  integrityStatus: byId("integrity-status"),
  integrityFailures: byId("integrity-failures"),
  integrityChecks: byId("integrity-checks"),
  integrityVerify: /** @type {HTMLButtonElement} */ (byId("integrity-verify")),
  note: byId("note"),
  diagnoses: byId("diagnoses"),
  prescriptions: byId("prescriptions"),
};

const page = {
  /** @type {string|null} */
  /** The access token: the sign-in's own, kept in sessionStorage. */
  get token() {
    return signIn.token;
  },
  offset: 0,
  total: 0,
  /** @type {Record<string, any>|null} */
  detail: null,
  /** @type {Playback|null} */
  playback: null,
  renewTimer: 0,
};

function showView(name) {
  show(el.loginView, name === "login");
  show(el.searchView, name === "search");
  show(el.detailView, name === "detail");
  show(el.logout, name !== "login");
}

function signOut(reasonKey) {
  closeDetail();
  signIn.end();
  el.results.replaceChildren();
  clearProblem(el.loginError);
  if (reasonKey) {
    el.loginError.replaceChildren(element("strong", "", rt(reasonKey)));
    el.loginError.hidden = false;
  }
  showView("login");
  el.loginUsername.focus();
}

/** An API call with the reviewer's token; a 401 or 403 ends the session. */
async function api(path, options = {}) {
  try {
    return await apiRequest(path, { ...options, token: page.token });
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) signOut("review.sessionOver");
    else if (error instanceof ApiError && error.status === 403) signOut("review.notReviewer");
    throw error;
  }
}

// Sign-in -------------------------------------------------------------------------------

async function onLogin(event) {
  event.preventDefault();
  const username = el.loginUsername.value.trim();
  const password = el.loginPassword.value;
  if (!username || !password) {
    (username ? el.loginPassword : el.loginUsername).focus();
    return;
  }
  const asksCode = !el.loginCodeField.hidden;
  const code = el.loginCode.value.replace(/\s+/g, "");
  clearProblem(el.loginError);
  el.loginSubmit.disabled = true;
  setRt(el.loginSubmit, "review.signingIn");
  try {
    const answer = await login(username, password, asksCode ? code : undefined);
    signIn.signedIn(answer);
    el.loginPassword.value = "";
    el.loginCode.value = "";
    await runSearch(0);
  } catch (error) {
    const problem = problemCodeOf(error);
    if (problem === "totp-required") {
      show(el.loginCodeField, true);
      el.loginError.replaceChildren(element("strong", "", rt("review.codeNeeded")));
      el.loginError.hidden = false;
      el.loginCode.focus();
    } else if (error instanceof ApiError && error.status === 401) {
      el.loginError.replaceChildren(element("strong", "", rt("review.loginFailed")));
      el.loginError.hidden = false;
    } else if (!(error instanceof ApiError && error.status === 403)) {
      showProblem(el.loginError, error);
    }
  } finally {
    el.loginSubmit.disabled = false;
    setRt(el.loginSubmit, "review.signIn");
  }
}

// Search ------------------------------------------------------------------------------

function searchParams(offset) {
  const form = new FormData(el.searchForm);
  const params = new URLSearchParams();
  for (const [name, value] of form.entries()) {
    const text = String(value).trim();
    if (text) params.set(name, text);
  }
  params.set("limit", String(PAGE_SIZE));
  params.set("offset", String(offset));
  return params;
}

async function runSearch(offset) {
  showView("search");
  clearProblem(el.searchError);
  let answer;
  try {
    answer = await api(`/review/consultations?${searchParams(offset)}`);
  } catch (error) {
    if (page.token) showProblem(el.searchError, error);
    return;
  }
  page.offset = answer.offset;
  page.total = answer.total;
  fillDoctors(answer.doctors ?? []);
  renderResults(answer.items ?? []);
}

function fillDoctors(doctors) {
  const chosen = el.doctor.value;
  const keep = el.doctor.options[0];
  el.doctor.replaceChildren(keep);
  for (const doctor of doctors) {
    const option = element("option", "", doctor.name);
    option.value = doctor.id;
    el.doctor.append(option);
  }
  el.doctor.value = chosen;
}

function renderResults(items) {
  el.results.replaceChildren();
  for (const item of items) {
    const row = element("div", "review-row");
    row.setAttribute("role", "row");
    row.dataset.testid = "review-row";
    row.dataset.consultationId = item.id;
    const when = element("span", "review-when", formatWhen(item.started_at || item.scheduled_at));
    const doctor = element("span", "", item.doctor.name);
    const patient = element("span", "", item.patient.name);
    const state = element("span", `badge badge-${item.state}`);
    setRt(state, `state.${item.state}`);
    const recorded = element("span", item.has_recording ? "review-recorded" : "muted");
    setRt(recorded, item.has_recording ? "review.yes" : "review.no");
    const open = element("button", "btn btn-small btn-secondary");
    open.type = "button";
    open.dataset.testid = "review-open";
    setRt(open, "review.open");
    open.addEventListener("click", () => openDetail(item.id));
    for (const cell of [when, doctor, patient, state, recorded]) cell.setAttribute("role", "cell");
    const action = element("span", "review-row-action");
    action.setAttribute("role", "cell");
    action.append(open);
    row.append(when, doctor, patient, state, recorded, action);
    el.results.append(row);
  }
  show(el.searchEmpty, items.length === 0);
  if (page.total === 0) setRt(el.searchTotal, "review.totalNone");
  else
    setRt(el.searchTotal, "review.total", {
      first: page.offset + 1,
      last: page.offset + items.length,
      total: page.total,
    });
  el.prev.disabled = page.offset === 0;
  el.next.disabled = page.offset + items.length >= page.total;
}

// One consultation ------------------------------------------------------------------------

async function openDetail(consultationId) {
  closeDetail();
  showView("detail");
  clearProblem(el.detailError);
  el.detailTitle.textContent = "";
  el.detailMeta.textContent = "";
  let detail;
  try {
    detail = await api(`/review/consultations/${encodeURIComponent(consultationId)}`);
  } catch (error) {
    if (page.token) showProblem(el.detailError, error);
    return;
  }
  page.detail = detail;
  renderHeader(detail);
  page.playback = new Playback(detail);
  renderTimeline(detail);
  renderRecord(detail.clinical);
  scheduleRenewal(detail.media_expires_at);
  verifyIntegrity();
}

function closeDetail() {
  page.playback?.destroy();
  page.playback = null;
  page.detail = null;
  clearTimeout(page.renewTimer);
  el.players.replaceChildren();
  el.lanes.replaceChildren();
  el.timeline.replaceChildren();
}

function renderHeader(detail) {
  const { consultation, doctor, patient } = detail;
  el.detailTitle.textContent = formatWhen(consultation.started_at || consultation.scheduled_at);
  setRt(el.detailMeta, "review.meta", {
    doctor: doctor?.name ?? "",
    patient: patient?.name ?? "",
    session: consultation.session_id,
  });
}

function whoOf(event) {
  return event.role ? rt(`role.${event.role}`) : "";
}

function renderTimeline(detail) {
  el.timeline.replaceChildren();
  for (const event of detail.timeline) {
    const item = element("li");
    const button = element("button", "review-event");
    button.type = "button";
    button.dataset.testid = "review-timeline-item";
    button.dataset.kind = event.kind;
    button.dataset.offsetMs = String(event.offset_ms);
    const time = element("span", "review-event-time input-mono", formatClock(event.offset_ms));
    const key = STRINGS.ru[`event.${event.kind}`] ? `event.${event.kind}` : "event.other";
    const text = element("span", "review-event-text");
    setRt(text, key, { who: whoOf(event), kind: event.kind });
    button.append(time, text);
    button.addEventListener("click", () => page.playback?.seek(Math.max(0, event.offset_ms)));
    item.append(button);
    el.timeline.append(item);
  }
  setRt(el.chatSummary, "review.chat", { n: detail.chat.count });
}

function renderRecord(clinical) {
  el.note.replaceChildren();
  if (clinical.withheld) {
    const withheld = element("p", "muted");
    setRt(withheld, "review.withheld");
    el.note.append(withheld);
  } else if (clinical.note) {
    for (const part of ["complaints", "anamnesis", "findings", "conclusion", "recommendations"]) {
      const text = clinical.note[part];
      if (!text) continue;
      const label = element("h3", "review-subtitle");
      setRt(label, `review.note.${part}`);
      el.note.append(label, element("p", "review-note-text", text));
    }
  } else {
    const none = element("p", "muted");
    setRt(none, "review.noNote");
    el.note.append(none);
  }
  el.diagnoses.replaceChildren();
  for (const d of clinical.diagnoses) {
    const item = element("li", "", `${d.code} — ${d.display}`);
    if (d.primary) {
      const badge = element("span", "badge badge-primary");
      setRt(badge, "review.primary");
      item.append(" ", badge);
    }
    el.diagnoses.append(item);
  }
  el.prescriptions.replaceChildren();
  for (const p of clinical.prescriptions) {
    const item = element("li");
    setRt(item, "review.rx", {
      medication: p.medication,
      dose: p.dose,
      days: p.duration_days,
      quantity: p.quantity,
      until: p.valid_until ?? "—",
    });
    el.prescriptions.append(item);
  }
  for (const list of [el.diagnoses, el.prescriptions]) {
    if (!list.children.length) {
      const none = element("li", "muted");
      setRt(none, "review.none");
      list.append(none);
    }
  }
}

// Media links expire within minutes: fetch new ones in time and hand them to the players.
function scheduleRenewal(expiresAt) {
  clearTimeout(page.renewTimer);
  if (!expiresAt) return;
  const wait = Math.max(5_000, expiresAt * 1000 - Date.now() - RENEW_BEFORE_MS);
  page.renewTimer = setTimeout(renewLinks, wait);
}

async function renewLinks() {
  const detail = page.detail;
  if (!detail) return;
  try {
    const answer = await api(`/review/consultations/${encodeURIComponent(detail.consultation.id)}/media`);
    page.playback?.renewLinks(answer.segments);
    scheduleRenewal(answer.media_expires_at);
  } catch {
    page.renewTimer = setTimeout(renewLinks, 10_000);
  }
}

// Integrity -----------------------------------------------------------------------------

/** A check's name in words ("segment <key>" → "Запись <key>"); the object key stays. */
function checkLabel(what) {
  const [kind, ...rest] = what.startsWith("registered hash") ? [what] : what.split(" ");
  const key = `check.${kind}`;
  const label = STRINGS.ru[key] ? rt(key) : kind;
  return [label, ...rest].join(" ");
}

async function verifyIntegrity() {
  const detail = page.detail;
  if (!detail) return;
  el.integrityStatus.dataset.status = "checking";
  setRt(el.integrityStatus, "review.integrity.checking");
  el.integrityFailures.replaceChildren();
  el.integrityChecks.replaceChildren();
  el.integrityVerify.disabled = true;
  try {
    const report = await api(
      `/review/consultations/${encodeURIComponent(detail.consultation.id)}/integrity`,
      { method: "POST" },
    );
    if (page.detail !== detail) return;
    const failed = report.checks.filter((check) => !check.ok);
    el.integrityStatus.dataset.status = report.status;
    if (report.status === "ok") setRt(el.integrityStatus, "review.integrity.ok");
    else
      setRt(el.integrityStatus, "review.integrity.failed", {
        n: failed.length,
        total: report.checks.length,
      });
    for (const check of failed) {
      const item = element("li", "review-failure");
      item.dataset.what = check.what;
      item.append(element("strong", "", checkLabel(check.what)), element("span", "review-check-detail", check.detail));
      el.integrityFailures.append(item);
    }
    for (const check of report.checks) {
      const item = element("li", check.ok ? "review-check-ok" : "review-check-failed");
      const mark = check.ok ? "✓" : "✗";
      item.append(
        element("strong", "", `${mark} ${checkLabel(check.what)}`),
        element("span", "review-check-detail", check.detail),
      );
      el.integrityChecks.append(item);
    }
  } catch (error) {
    if (page.detail !== detail) return;
    const none = problemCodeOf(error) === "no-protocol";
    el.integrityStatus.dataset.status = none ? "none" : "error";
    setRt(el.integrityStatus, none ? "review.integrity.none" : "review.integrity.error");
  } finally {
    el.integrityVerify.disabled = false;
  }
}

// Synchronized playback -------------------------------------------------------------------

/** One participant's recording: their segments on the axis, played by one `<video>`. */
class ParticipantPlayer {
  constructor(participant) {
    this.participant = participant;
    this.segments = participant.segments
      .filter((s) => s.media_url)
      .map((s) => ({ ...s, end_ms: s.offset_ms + (s.duration_ms ?? 0) }));
    this.root = element("figure", "review-player");
    this.root.dataset.testid = "review-player";
    this.root.dataset.participantId = participant.id;
    this.root.dataset.role = participant.role;
    this.root.dataset.state = "gap";
    const caption = element("figcaption", "review-player-name");
    caption.append(element("strong", "", participant.display_name), " · ");
    const role = element("span");
    setRt(role, `role.${participant.role}`);
    caption.append(role);
    this.video = /** @type {HTMLVideoElement} */ (element("video", "review-video"));
    this.video.playsInline = true;
    this.video.preload = "auto";
    this.video.dataset.testid = "review-video";
    this.gap = element("div", "review-gap");
    this.gap.dataset.testid = "review-gap";
    setRt(this.gap, this.segments.length ? "review.noRecording" : "review.noSegments");
    const stage = element("div", "review-player-stage");
    stage.append(this.video, this.gap);
    this.root.append(stage, caption);
    /** @type {Record<string, any>|null} */
    this.current = null;
    this.video.addEventListener("ended", () => {
      // The file ended before the manifest said: a gap until the next segment.
      if (this.current) this.current.end_ms = Math.min(this.current.end_ms, page.playback?.position ?? 0);
    });
  }

  segmentAt(position) {
    return this.segments.find((s) => s.offset_ms <= position && position < s.end_ms) ?? null;
  }

  /** Where this player's media is on the axis (ms) while it plays; null otherwise. */
  mediaPosition() {
    const video = this.video;
    if (!this.current || video.paused || video.seeking || video.readyState < 2) return null;
    return this.current.offset_ms + video.currentTime * 1000;
  }

  /** Show the clock's `position`; `exact` puts the media there even if it is close. */
  follow(position, playing, exact) {
    const segment = this.segmentAt(position);
    if (!segment) {
      if (this.current || this.video.getAttribute("src")) {
        this.video.pause();
        this.video.removeAttribute("src");
        this.video.load();
      }
      this.current = null;
      this.root.dataset.state = "gap";
      this.root.dataset.segmentId = "";
      show(this.gap, true);
      return;
    }
    show(this.gap, false);
    this.root.dataset.segmentId = segment.id;
    const within = (position - segment.offset_ms) / 1000;
    if (this.current !== segment || !this.video.getAttribute("src")) {
      this.current = segment;
      this.video.src = segment.media_url;
      this.video.currentTime = within;
      this.root.dataset.state = "loading";
    } else if (exact || Math.abs(this.video.currentTime - within) > MAX_DRIFT_S) {
      if (!this.video.seeking) this.video.currentTime = within;
    }
    if (playing && this.video.paused) this.#play();
    if (!playing && !this.video.paused) this.video.pause();
    this.root.dataset.state = playing ? "playing" : "paused";
  }

  async #play() {
    try {
      await this.video.play();
    } catch (error) {
      if (error?.name === "NotAllowedError" && !this.video.muted) {
        // Autoplay with sound refused: play muted rather than not at all.
        this.video.muted = true;
        this.video.play().catch(() => {});
      }
    }
  }

  /** New links for the same segments; the one playing is reloaded at the same place. */
  renew(links) {
    for (const segment of this.segments) {
      if (links[segment.id]) segment.media_url = links[segment.id];
    }
    if (this.current) {
      const time = this.video.currentTime;
      const paused = this.video.paused;
      this.video.src = this.current.media_url;
      this.video.currentTime = time;
      if (!paused) this.#play();
    }
  }

  destroy() {
    this.video.pause();
    this.video.removeAttribute("src");
    this.video.load();
  }
}

/** One clock for every player: play, pause, seek, and the track under them. */
class Playback {
  constructor(detail) {
    this.duration = Math.max(detail.consultation.duration_ms, 1);
    this.position = 0;
    this.playing = false;
    this.lastTick = performance.now();
    this.players = detail.participants
      .filter((p) => p.role === "doctor" || p.role === "patient" || p.segments.length)
      .map((p) => new ParticipantPlayer(p));
    el.players.replaceChildren(...this.players.map((p) => p.root));
    el.seek.max = String(this.duration);
    el.seek.value = "0";
    this.#drawLanes(detail);
    this.onSeekInput = () => this.seek(Number(el.seek.value));
    this.onPlay = () => (this.playing ? this.pause() : this.start());
    el.seek.addEventListener("input", this.onSeekInput);
    el.play.addEventListener("click", this.onPlay);
    // Start where the recording starts, not at the (silent) opening of the consultation.
    const first = Math.min(...this.players.flatMap((p) => p.segments.map((s) => s.offset_ms)));
    this.seek(Number.isFinite(first) ? first : 0);
    this.timer = setInterval(() => this.#tick(), TICK_MS);
  }

  start() {
    if (this.position >= this.duration) this.position = 0;
    this.playing = true;
    this.lastTick = performance.now();
    el.play.setAttribute("aria-pressed", "true");
    setRt(el.play, "review.pause");
    this.#apply(true);
  }

  pause() {
    this.playing = false;
    el.play.setAttribute("aria-pressed", "false");
    setRt(el.play, "review.play");
    this.#apply(true);
  }

  /** Put every player at `position` (ms from the consultation's start). */
  seek(position) {
    this.position = Math.min(Math.max(0, position), this.duration);
    this.lastTick = performance.now();
    this.#apply(true);
  }

  renewLinks(links) {
    for (const player of this.players) player.renew(links);
  }

  destroy() {
    clearInterval(this.timer);
    el.seek.removeEventListener("input", this.onSeekInput);
    el.play.removeEventListener("click", this.onPlay);
    for (const player of this.players) player.destroy();
    this.playing = false;
    el.play.setAttribute("aria-pressed", "false");
    setRt(el.play, "review.play");
  }

  #tick() {
    const now = performance.now();
    if (this.playing) {
      // A playing video is the better clock (it stalls when its data does); the wall
      // clock runs through gaps where no one was recorded.
      const leader = this.players.map((p) => p.mediaPosition()).find((p) => p !== null);
      this.position = leader ?? this.position + (now - this.lastTick);
      if (this.position >= this.duration) {
        this.position = this.duration;
        this.pause();
      }
    }
    this.lastTick = now;
    this.#apply(false);
  }

  #apply(exact) {
    for (const player of this.players) player.follow(this.position, this.playing, exact);
    el.seek.value = String(Math.round(this.position));
    el.seek.dataset.positionMs = String(Math.round(this.position));
    el.clock.textContent = `${formatClock(this.position)} / ${formatClock(this.duration)}`;
  }

  #drawLanes(detail) {
    el.lanes.replaceChildren();
    for (const player of this.players) {
      const lane = element("div", `review-lane review-lane-${player.participant.role}`);
      for (const segment of player.segments) {
        const bar = element("span", "review-lane-segment");
        bar.style.left = `${(100 * segment.offset_ms) / this.duration}%`;
        bar.style.width = `${Math.max(0.3, (100 * (segment.end_ms - segment.offset_ms)) / this.duration)}%`;
        lane.append(bar);
      }
      el.lanes.append(lane);
    }
    const marks = element("div", "review-lane review-lane-events");
    for (const event of detail.timeline) {
      const mark = element("span", "review-lane-event");
      mark.style.left = `${(100 * Math.max(0, event.offset_ms)) / this.duration}%`;
      marks.append(mark);
    }
    el.lanes.append(marks);
  }
}

// Start -------------------------------------------------------------------------------------

function start() {
  const title = document.querySelector("title");
  if (title) delete title.dataset.i18n; // the page's own strings name it
  initLanguage(/** @type {HTMLSelectElement} */ (byId("lang-select")));
  applyPageStrings();
  onLanguageChange(() => {
    applyPageStrings();
    if (page.detail) renderHeader(page.detail);
  });
  el.loginForm.addEventListener("submit", onLogin);
  el.searchForm.addEventListener("submit", (event) => {
    event.preventDefault();
    runSearch(0);
  });
  el.prev.addEventListener("click", () => runSearch(Math.max(0, page.offset - PAGE_SIZE)));
  el.next.addEventListener("click", () => runSearch(page.offset + PAGE_SIZE));
  el.back.addEventListener("click", () => {
    closeDetail();
    showView("search");
  });
  el.integrityVerify.addEventListener("click", verifyIntegrity);
  el.logout.addEventListener("click", () => signOut());
  signIn.takeFromFragment();
  if (page.token) runSearch(0);
  else showView("login");
}

start();
