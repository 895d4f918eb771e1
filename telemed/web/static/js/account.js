/**
 * The patient's account (/account): sign-in with username and password, upcoming
 * bookings (move, cancel), free slots to book, past consultations with their protocol
 * files, e-prescriptions, who accessed the card (the audit trail,
 * GET /fhir/AuditEvent?patient=<own id>), and "My data": the patient's rights over their
 * personal data (152-FZ) — a copy of everything (POST /api/v1/privacy/export, saved as a
 * file), correction and erasure requests (/api/v1/privacy/requests) and delegation of
 * sections of the card to a trusted person (/api/v1/delegations).
 *
 * `telemed demo` opens the page signed in: the access token rides in the fragment
 * (`#token=…`) and is moved to sessionStorage at once.
 */

import { ApiError, apiRequest, clearProblem, login, logout, problemCodeOf, showProblem } from "./api.js";
import { getLanguage, getLocale, onLanguageChange } from "./i18n.js";
import { byId, initLanguage, show, signInElements } from "./ui.js";
import { PageSession } from "./session.js";
import { NotificationBell } from "./notifications.js";

/** The sign-in of this page (its tokens in sessionStorage). */
const signIn = new PageSession("account");
const SLOT_DAYS = 14;
const TOAST_MS = 6000;
// The audit trail is read oldest first, a page at a time; at most this many pages.
const AUDIT_PAGE = 200;
const AUDIT_MAX_PAGES = 10;
// Entries shown per "show more".
const ACCESS_STEP = 25;

// Strings -----------------------------------------------------------------------------

const STRINGS = {
  ru: {
    "account.pageTitle": "Личный кабинет пациента — Телемед",
    "account.title": "Личный кабинет пациента",
    "account.logout": "Выйти",
    "account.loginTitle": "Вход в личный кабинет",
    "account.username": "Имя пользователя",
    "account.password": "Пароль",
    "account.code": "Код из приложения-аутентификатора",
    "account.signIn": "Войти",
    "account.loginFailed": "Неверное имя пользователя или пароль",
    "account.codeNeeded": "Введите код из приложения-аутентификатора",
    "account.notPatient": "Это кабинет пациента: войдите с учётной записью пациента",
    "account.sessionOver": "Сеанс завершён, войдите снова",
    "account.consentTitle": "Согласие на обработку персональных данных",
    "account.consentIntro": "Чтобы пользоваться кабинетом, прочитайте и примите согласие.",
    "account.consentAccept": "Принимаю",
    "account.clinic": "Клиника: {name}",
    "account.bookings": "Мои записи на приём",
    "account.bookingsEmpty": "Предстоящих записей нет",
    "account.book": "Записаться на приём",
    "account.doctor": "Врач",
    "account.anyDoctor": "Все врачи",
    "account.slotsEmpty": "Свободного времени на ближайшие две недели нет",
    "account.bookSlot": "Записаться на {time}",
    "account.moveHere": "Перенести на {time}",
    "account.reschedule": "Перенести",
    "account.cancel": "Отменить запись",
    "account.cancelConfirm": "Отменить запись на {when}?",
    "account.cancelYes": "Да, отменить",
    "account.cancelNo": "Нет",
    "account.rescheduling": "Перенос записи на {when}: выберите новое время",
    "account.rescheduleStop": "Не переносить",
    "account.booked": "Вы записаны на {when}",
    "account.moved": "Запись перенесена на {when}",
    "account.cancelled": "Запись отменена",
    "account.slotTaken": "Это время только что заняли: выберите другое",
    "account.consultations": "Мои консультации",
    "account.consultationsEmpty": "Консультаций пока не было",
    "account.download": "Скачать {name}",
    "account.noProtocol": "Протокол появится после завершения консультации",
    "account.prescriptions": "Мои рецепты",
    "account.prescriptionsEmpty": "Рецептов нет",
    "account.validUntil": "действует до {date}",
    "account.issuedAt": "выписан {date}",
    "account.dispensedAt": "отпущен {date}",
    "account.prescriptionPdf": "Рецепт (PDF)",
    "account.verify": "Проверить рецепт",
    "account.accessLog": "Кто обращался к моей карте",
    "account.accessHint": "Каждое обращение к вашим данным записывается в защищённый журнал.",
    "account.accessEmpty": "Записей пока нет",
    "account.refresh": "Обновить",
    "account.more": "Показать ещё",
    "account.when": "Когда",
    "account.who": "Кто",
    "account.what": "Что",
    "account.outcome": "Результат",
    "account.you": "Вы",
    "account.someone": "{role}",
    "account.named": "{role} {name}",
    "state.scheduled": "Запланирована",
    "state.waiting": "Ожидает начала",
    "state.in_progress": "Идёт",
    "state.finished": "Завершена",
    "state.cancelled": "Отменена",
    "rx.draft": "Черновик",
    "rx.active": "Действует",
    "rx.final": "Действует",
    "rx.issued": "Действует",
    "rx.dispensed": "Отпущен",
    "rx.expired": "Истёк",
    "rx.cancelled": "Отменён",
    "rx.revoked": "Отозван",
    "role.doctor": "Врач",
    "role.nurse": "Медсестра",
    "role.patient": "Пациент",
    "role.trusted-person": "Доверенное лицо",
    "role.clinic-admin": "Администратор клиники",
    "role.reviewer": "Рецензент клиники",
    "role.insurance-agent": "Страховой представитель",
    "role.pharmacist": "Фармацевт",
    "role.card-client": "Внешняя система",
    "role.system": "Система",
    "role.anonymous": "Неизвестный",
    "action.read": "Просмотр",
    "action.search": "Поиск",
    "action.create": "Создание",
    "action.update": "Изменение",
    "action.delete": "Удаление",
    "action.login": "Вход в систему",
    "action.logout": "Выход из системы",
    "action.export": "Выгрузка",
    "action.publish": "Видеозапись",
    "action.unpublish": "Окончание видеозаписи",
    "action.other": "Действие «{code}»",
    "resource.appointment": "запись на приём",
    "resource.schedule": "расписание",
    "resource.consultation": "консультации",
    "resource.protocol": "протокол консультации",
    "resource.clinical-record": "медицинская запись",
    "resource.clinical-note": "заключение врача",
    "resource.diagnosis": "диагнозы",
    "resource.prescription": "рецепты",
    "resource.referral": "направления",
    "resource.recording": "видеозапись консультации",
    "resource.account": "учётная запись",
    "resource.AuditEvent": "журнал обращений",
    "resource.Patient": "карта пациента",
    "resource.Encounter": "визиты",
    "resource.Condition": "диагнозы в карте",
    "resource.MedicationRequest": "рецепты в карте",
    "resource.DocumentReference": "документы в карте",
    "resource.Composition": "заключения в карте",
    "resource.Consent": "согласия",
    "resource.ProcessingConsent": "согласие на обработку данных",
    "resource.delegation": "доверенности",
    "outcome.0": "Выполнено",
    "outcome.4": "Отказано",
    "outcome.8": "Ошибка",
    "api.error": "Не удалось выполнить запрос",
    "data.title": "Мои данные",
    "data.exportTitle": "Копия всех данных",
    "data.exportHint": "Файл в формате FHIR (JSON): медицинская карта, документы консультаций, учётная запись и согласия.",
    "data.export": "Скачать мои данные",
    "data.exported": "Файл с вашими данными сохранён",
    "data.requestsTitle": "Запросы об исправлении и удалении",
    "data.correctionLabel": "Что в ваших данных неверно и как должно быть",
    "data.correctionHint": "Запрос рассмотрит администратор клиники; ответ появится в списке ниже.",
    "data.correctionSubmit": "Отправить запрос на исправление",
    "data.correctionEmpty": "Опишите, что в данных неверно и как должно быть",
    "data.correctionFiled": "Запрос на исправление отправлен",
    "data.erasure": "Запросить удаление данных",
    "data.erasureQuestion": "Запросить удаление ваших персональных данных?",
    "data.erasureLaw":
      "Медицинские записи — карта, протоколы и записи консультаций, рецепты — по закону хранятся в течение установленных сроков, поэтому удалить их нельзя. Вместо удаления обработка данных вашей карты будет ограничена: читать её смогут только вы и ваши лечащие врачи, любое другое обращение будет отклонено и записано в журнал.",
    "data.erasureRest": "Данные, которые закон хранить не требует (например, настройки уведомлений), будут удалены сразу.",
    "data.erasureYes": "Да, подать запрос",
    "data.erasureNo": "Отмена",
    "data.erasureFiled": "Запрос принят: обработка данных карты ограничена",
    "data.requestsList": "Мои запросы",
    "data.requestsEmpty": "Запросов пока не было",
    "data.filedAt": "подан {date}",
    "data.resolvedAt": "ответ {date}",
    "data.reason": "Ответ: {reason}",
    "data.delegationsTitle": "Доверенное лицо",
    "data.delegationsHint":
      "Разрешите близкому человеку читать выбранные разделы вашей карты до указанной даты. Разрешение можно отозвать в любой момент.",
    "data.delegateUsername": "Имя пользователя доверенного лица",
    "data.delegateSections": "Разделы карты",
    "data.delegateExpires": "Действует до (включительно)",
    "data.delegateSubmit": "Выдать доверенность",
    "data.delegated": "Доверенность выдана",
    "data.delegationsList": "Мои доверенности",
    "data.delegationsEmpty": "Доверенностей нет",
    "data.until": "до {date}",
    "data.revoke": "Отозвать",
    "data.revokeLabel": "Отозвать доверенность для {name}",
    "data.revoked": "Доверенность отозвана",
    "data.needUsername": "Укажите имя пользователя доверенного лица",
    "data.needSections": "Выберите хотя бы один раздел карты",
    "data.needExpiry": "Укажите дату, до которой действует доверенность",
    "data.pastExpiry": "Дата окончания должна быть позже сегодняшней",
    "problem.delegate-not-found": "Доверенного лица с таким именем пользователя нет",
    "problem.invalid-sections": "Выберите разделы карты из списка",
    "problem.invalid-expiry": "Срок доверенности — дата в будущем, не дальше чем через пять лет",
    "problem.delegation-not-found": "Такой доверенности нет: обновите страницу",
    "problem.details": "Опишите, что в данных неверно и как должно быть (до 4000 символов)",
    "request.correction": "Исправление данных",
    "request.erasure": "Удаление данных",
    "request.open": "На рассмотрении",
    "request.done": "Исправлено",
    "request.rejected": "Отклонён",
    "request.restricted": "Обработка ограничена",
    "delegation.active": "Действует",
    "delegation.expired": "Истекла",
    "delegation.revoked": "Отозвана",
    "section.consultations": "Консультации",
    "section.documents": "Документы: протоколы, записи, заключения",
    "section.prescriptions": "Рецепты",
    "section.diagnoses": "Диагнозы",
    "section.referrals": "Направления",
    "resource.Bundle": "все ваши данные",
    "resource.RightsRequest": "запросы о персональных данных",
    "resource.Delegation": "доверенности",
  },
  en: {
    "account.pageTitle": "Patient account — Telemed",
    "account.title": "Patient account",
    "account.logout": "Sign out",
    "account.loginTitle": "Sign in to your account",
    "account.username": "Username",
    "account.password": "Password",
    "account.code": "Code from the authenticator app",
    "account.signIn": "Sign in",
    "account.loginFailed": "Wrong username or password",
    "account.codeNeeded": "Enter the code from your authenticator app",
    "account.notPatient": "This is a patient's account: sign in with a patient's credentials",
    "account.sessionOver": "Your session has ended, please sign in again",
    "account.consentTitle": "Consent to the processing of personal data",
    "account.consentIntro": "To use your account, read and accept the consent.",
    "account.consentAccept": "I accept",
    "account.clinic": "Clinic: {name}",
    "account.bookings": "My appointments",
    "account.bookingsEmpty": "No upcoming appointments",
    "account.book": "Book an appointment",
    "account.doctor": "Doctor",
    "account.anyDoctor": "Any doctor",
    "account.slotsEmpty": "No free time in the next two weeks",
    "account.bookSlot": "Book {time}",
    "account.moveHere": "Move to {time}",
    "account.reschedule": "Reschedule",
    "account.cancel": "Cancel",
    "account.cancelConfirm": "Cancel the appointment on {when}?",
    "account.cancelYes": "Yes, cancel",
    "account.cancelNo": "No",
    "account.rescheduling": "Moving the appointment on {when}: choose a new time",
    "account.rescheduleStop": "Keep it",
    "account.booked": "Booked for {when}",
    "account.moved": "Moved to {when}",
    "account.cancelled": "Appointment cancelled",
    "account.slotTaken": "Somebody has just taken this time: choose another",
    "account.consultations": "My consultations",
    "account.consultationsEmpty": "No consultations yet",
    "account.download": "Download {name}",
    "account.noProtocol": "The protocol appears once the consultation is over",
    "account.prescriptions": "My prescriptions",
    "account.prescriptionsEmpty": "No prescriptions",
    "account.validUntil": "valid until {date}",
    "account.issuedAt": "issued {date}",
    "account.dispensedAt": "dispensed {date}",
    "account.prescriptionPdf": "Prescription (PDF)",
    "account.verify": "Verify",
    "account.accessLog": "Who accessed my card",
    "account.accessHint": "Every access to your data is written to a tamper-evident log.",
    "account.accessEmpty": "No entries yet",
    "account.refresh": "Refresh",
    "account.more": "Show more",
    "account.when": "When",
    "account.who": "Who",
    "account.what": "What",
    "account.outcome": "Outcome",
    "account.you": "You",
    "account.someone": "{role}",
    "account.named": "{role} {name}",
    "state.scheduled": "Scheduled",
    "state.waiting": "About to start",
    "state.in_progress": "In progress",
    "state.finished": "Finished",
    "state.cancelled": "Cancelled",
    "rx.draft": "Draft",
    "rx.active": "Valid",
    "rx.final": "Valid",
    "rx.issued": "Valid",
    "rx.dispensed": "Dispensed",
    "rx.expired": "Expired",
    "rx.cancelled": "Cancelled",
    "rx.revoked": "Revoked",
    "role.doctor": "Doctor",
    "role.nurse": "Nurse",
    "role.patient": "Patient",
    "role.trusted-person": "Trusted person",
    "role.clinic-admin": "Clinic administrator",
    "role.reviewer": "Clinic reviewer",
    "role.insurance-agent": "Insurance agent",
    "role.pharmacist": "Pharmacist",
    "role.card-client": "External system",
    "role.system": "System",
    "role.anonymous": "Unknown",
    "action.read": "Viewed",
    "action.search": "Searched",
    "action.create": "Created",
    "action.update": "Changed",
    "action.delete": "Deleted",
    "action.login": "Signed in",
    "action.logout": "Signed out",
    "action.export": "Exported",
    "action.publish": "Video recording",
    "action.unpublish": "Video recording ended",
    "action.other": "Action “{code}”",
    "resource.appointment": "appointment",
    "resource.schedule": "schedule",
    "resource.consultation": "consultations",
    "resource.protocol": "consultation protocol",
    "resource.clinical-record": "medical record",
    "resource.clinical-note": "doctor's conclusion",
    "resource.diagnosis": "diagnoses",
    "resource.prescription": "prescriptions",
    "resource.referral": "referrals",
    "resource.recording": "consultation video",
    "resource.account": "account",
    "resource.AuditEvent": "access log",
    "resource.Patient": "patient card",
    "resource.Encounter": "visits",
    "resource.Condition": "diagnoses in the card",
    "resource.MedicationRequest": "prescriptions in the card",
    "resource.DocumentReference": "documents in the card",
    "resource.Composition": "conclusions in the card",
    "resource.Consent": "consents",
    "resource.ProcessingConsent": "consent to data processing",
    "resource.delegation": "delegations",
    "outcome.0": "Done",
    "outcome.4": "Refused",
    "outcome.8": "Failed",
    "api.error": "The request failed",
    "data.title": "My data",
    "data.exportTitle": "A copy of all my data",
    "data.exportHint": "A FHIR (JSON) file: your medical card, consultation documents, account and consents.",
    "data.export": "Download my data",
    "data.exported": "Your data has been saved to a file",
    "data.requestsTitle": "Correction and erasure requests",
    "data.correctionLabel": "What is wrong in your data and what it should be",
    "data.correctionHint": "An administrator of the clinic reviews the request; the answer appears in the list below.",
    "data.correctionSubmit": "Request a correction",
    "data.correctionEmpty": "Say what is wrong in your data and what it should be",
    "data.correctionFiled": "Correction request sent",
    "data.erasure": "Request erasure of my data",
    "data.erasureQuestion": "Request erasure of your personal data?",
    "data.erasureLaw":
      "Medical records (your card, consultation protocols and recordings, prescriptions) must by law be kept for the statutory periods, so they cannot be erased. Instead, the processing of your card will be restricted: only you and your treating doctors will read it; any other access will be refused and logged.",
    "data.erasureRest": "Data the law does not require to keep (your notification settings, for example) is erased at once.",
    "data.erasureYes": "Yes, file the request",
    "data.erasureNo": "Cancel",
    "data.erasureFiled": "Request accepted: the processing of your card is restricted",
    "data.requestsList": "My requests",
    "data.requestsEmpty": "No requests yet",
    "data.filedAt": "filed {date}",
    "data.resolvedAt": "answered {date}",
    "data.reason": "Answer: {reason}",
    "data.delegationsTitle": "Trusted person",
    "data.delegationsHint":
      "Let someone close to you read chosen sections of your card until a date. You may revoke it at any time.",
    "data.delegateUsername": "The trusted person's username",
    "data.delegateSections": "Sections of the card",
    "data.delegateExpires": "Valid until (inclusive)",
    "data.delegateSubmit": "Grant access",
    "data.delegated": "Access granted",
    "data.delegationsList": "My delegations",
    "data.delegationsEmpty": "No delegations",
    "data.until": "until {date}",
    "data.revoke": "Revoke",
    "data.revokeLabel": "Revoke the delegation to {name}",
    "data.revoked": "Delegation revoked",
    "data.needUsername": "Enter the trusted person's username",
    "data.needSections": "Choose at least one section of the card",
    "data.needExpiry": "Enter the date the delegation ends",
    "data.pastExpiry": "The end date must be after today",
    "problem.delegate-not-found": "There is no trusted person with that username",
    "problem.invalid-sections": "Choose sections of the card from the list",
    "problem.invalid-expiry": "The delegation ends on a future date, within five years",
    "problem.delegation-not-found": "No such delegation: reload the page",
    "problem.details": "Say what is wrong in your data and what it should be (up to 4000 characters)",
    "request.correction": "Correction",
    "request.erasure": "Erasure",
    "request.open": "Under review",
    "request.done": "Corrected",
    "request.rejected": "Rejected",
    "request.restricted": "Processing restricted",
    "delegation.active": "Active",
    "delegation.expired": "Expired",
    "delegation.revoked": "Revoked",
    "section.consultations": "Consultations",
    "section.documents": "Documents: protocols, recordings, conclusions",
    "section.prescriptions": "Prescriptions",
    "section.diagnoses": "Diagnoses",
    "section.referrals": "Referrals",
    "resource.Bundle": "all your data",
    "resource.RightsRequest": "personal data requests",
    "resource.Delegation": "delegations",
  },
};

/** FHIR AuditEvent.action codes of the CRUD actions; others carry a subtype code. */
const FHIR_ACTIONS = { R: "read", C: "create", U: "update", D: "delete" };

function at(key, params) {
  const template = STRINGS[getLanguage()]?.[key] ?? STRINGS.ru[key] ?? key;
  if (!params) return template;
  return template.replace(/\{(\w+)\}/g, (whole, name) =>
    Object.hasOwn(params, name) ? String(params[name]) : whole,
  );
}

function known(key) {
  return key in STRINGS.ru;
}

/** Set an element's text to one of the page's strings, re-rendered on a language switch. */
function setAt(el, key, params) {
  el.dataset.at = key;
  if (params) el.dataset.atArgs = JSON.stringify(params);
  else delete el.dataset.atArgs;
  el.textContent = at(key, params);
}

function applyPageStrings() {
  document.title = at("account.pageTitle");
  for (const el of document.querySelectorAll("[data-at]")) {
    const args = el.dataset.atArgs ? JSON.parse(el.dataset.atArgs) : undefined;
    el.textContent = at(el.dataset.at, args);
  }
}

function when(value) {
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return "";
  return new Intl.DateTimeFormat(getLocale(), { dateStyle: "medium", timeStyle: "short" }).format(date);
}

function day(value) {
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return "";
  return new Intl.DateTimeFormat(getLocale(), { weekday: "long", day: "numeric", month: "long" }).format(date);
}

function clock(value) {
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return "";
  return new Intl.DateTimeFormat(getLocale(), { hour: "2-digit", minute: "2-digit" }).format(date);
}

function dateOnly(value) {
  // A bare date ("2026-12-31") is a calendar day, not midnight UTC.
  const parts = /^(\d{4})-(\d{2})-(\d{2})$/.exec(String(value ?? ""));
  const date = parts ? new Date(Number(parts[1]), Number(parts[2]) - 1, Number(parts[3])) : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value ?? "");
  return new Intl.DateTimeFormat(getLocale(), { dateStyle: "medium" }).format(date);
}

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

function toast(text, kind = "info") {
  const item = element("div", `toast toast-${kind}`, text);
  el.toasts.append(item);
  setTimeout(() => item.remove(), TOAST_MS);
}

// Elements and state ---------------------------------------------------------------------

const el = {
  logout: byId("logout"),
  ...signInElements(),
  consentView: byId("consent-view"),
  consentText: byId("consent-text"),
  consentError: byId("consent-error"),
  consentAccept: /** @type {HTMLButtonElement} */ (byId("consent-accept")),
  accountView: byId("account-view"),
  name: byId("account-name"),
  clinic: byId("account-clinic"),
  error: byId("account-error"),
  bookingsList: byId("bookings-list"),
  bookingsEmpty: byId("bookings-empty"),
  slotsDoctor: /** @type {HTMLSelectElement} */ (byId("slots-doctor")),
  slotsDays: byId("slots-days"),
  slotsEmpty: byId("slots-empty"),
  rescheduleBanner: byId("reschedule-banner"),
  rescheduleText: byId("reschedule-text"),
  rescheduleCancel: byId("reschedule-cancel"),
  consultationsList: byId("consultations-list"),
  consultationsEmpty: byId("consultations-empty"),
  prescriptionsList: byId("prescriptions-list"),
  prescriptionsEmpty: byId("prescriptions-empty"),
  prescriptionsError: byId("prescriptions-error"),
  accessTable: byId("access-table"),
  accessRows: byId("access-rows"),
  accessEmpty: byId("access-empty"),
  accessError: byId("access-error"),
  accessMore: byId("access-more"),
  accessRefresh: byId("access-refresh"),
  exportButton: /** @type {HTMLButtonElement} */ (byId("export")),
  exportError: byId("export-error"),
  correctionForm: /** @type {HTMLFormElement} */ (byId("correction-form")),
  correctionDetails: /** @type {HTMLTextAreaElement} */ (byId("correction-details")),
  correctionSubmit: /** @type {HTMLButtonElement} */ (byId("correction-submit")),
  erasure: /** @type {HTMLButtonElement} */ (byId("erasure")),
  erasureConfirm: byId("erasure-confirm"),
  erasureYes: /** @type {HTMLButtonElement} */ (byId("erasure-yes")),
  erasureNo: /** @type {HTMLButtonElement} */ (byId("erasure-no")),
  requestsError: byId("requests-error"),
  requestsList: byId("requests-list"),
  requestsEmpty: byId("requests-empty"),
  delegateForm: /** @type {HTMLFormElement} */ (byId("delegate-form")),
  delegateUsername: /** @type {HTMLInputElement} */ (byId("delegate-username")),
  delegateExpires: /** @type {HTMLInputElement} */ (byId("delegate-expires")),
  delegateSubmit: /** @type {HTMLButtonElement} */ (byId("delegate-submit")),
  delegationsError: byId("delegations-error"),
  delegationsList: byId("delegations-list"),
  delegationsEmpty: byId("delegations-empty"),
  toasts: byId("toasts"),
};

const page = {
  /** @type {string|null} */
  /** The access token: the sign-in's own, kept in sessionStorage. */
  get token() {
    return signIn.token;
  },
  /** @type {{patient_id: string, user_id: string, display_name: string, clinic_name: string}|null} */
  profile: null,
  /** @type {Array<Record<string, any>>} */
  bookings: [],
  /** @type {Array<Record<string, any>>} */
  slots: [],
  /** @type {Array<Record<string, any>>} */
  consultations: [],
  /** @type {Array<Record<string, any>>} */
  prescriptions: [],
  /** The booking being moved, while the patient picks its new time. */
  /** @type {Record<string, any>|null} */
  moving: null,
  /** Audit entries, newest first, and how many are shown. */
  /** @type {Array<Record<string, any>>} */
  access: [],
  accessShown: ACCESS_STEP,
  /** @type {Map<string, Record<string, any>>} */
  actors: new Map(),
  /** The patient's requests about their data and their delegations, newest first. */
  /** @type {Array<Record<string, any>>} */
  requests: [],
  /** @type {Array<Record<string, any>>} */
  delegations: [],
  busy: false,
};

/** The unread notifications and their live stream, while someone is signed in. */
const bell = new NotificationBell(() => page.token);

/** @param {"login"|"consent"|"account"} name */
function showView(name) {
  show(el.loginView, name === "login");
  show(el.consentView, name === "consent");
  show(el.accountView, name === "account");
  show(el.logout, name !== "login");
}

// Token ----------------------------------------------------------------------------------

function signOut(reasonKey) {
  bell.stop();
  signIn.end();
  page.profile = null;
  page.moving = null;
  // What one patient typed or saw stays off the screen of whoever signs in next.
  page.requests = [];
  page.delegations = [];
  el.correctionForm.reset();
  el.delegateForm.reset();
  show(el.erasureConfirm, false);
  el.requestsList.replaceChildren();
  el.delegationsList.replaceChildren();
  show(el.loginCodeField, false);
  el.loginCode.value = "";
  if (reasonKey) {
    el.loginError.replaceChildren(element("strong", "", at(reasonKey)));
    el.loginError.hidden = false;
  } else {
    clearProblem(el.loginError);
  }
  showView("login");
  el.loginUsername.focus();
}

/** The API as this page calls it: 401 signs out, a missing consent asks for it. */
async function api(path, options = {}) {
  try {
    return await apiRequest(path, { ...options, token: page.token });
  } catch (error) {
    if (error instanceof ApiError && error.unauthorized) {
      signOut("account.sessionOver");
    } else if (problemCodeOf(error) === "processing-consent-required") {
      await askConsent();
    }
    throw error;
  }
}

/** A GET of a URL outside /api/v1 (the FHIR audit trail) with the token. */
async function fetchJson(url) {
  const response = await fetch(url, {
    headers: { Accept: "application/fhir+json", Authorization: `Bearer ${page.token}` },
    cache: "no-store",
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    if (response.status === 401) signOut("account.sessionOver");
    throw new ApiError({ status: response.status, detail: body?.issue?.[0]?.diagnostics ?? "" });
  }
  return body;
}

/**
 * Fetch a file that needs the token (a protocol, the export of all data): the body as a
 * blob and the name the server gave it (Content-Disposition), if any.
 */
async function fetchFile(url, method = "GET") {
  const response = await fetch(url, {
    method,
    headers: { Authorization: `Bearer ${page.token}` },
    cache: "no-store",
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    const error = new ApiError({
      status: response.status,
      title: typeof body.title === "string" ? body.title : "",
      detail: typeof body.detail === "string" ? body.detail : "",
      type: typeof body.type === "string" ? body.type : undefined,
    });
    if (error.unauthorized) signOut("account.sessionOver");
    else if (problemCodeOf(error) === "processing-consent-required") await askConsent();
    throw error;
  }
  const disposition = response.headers.get("Content-Disposition") ?? "";
  const named = /filename="([^"\\/]+)"/.exec(disposition);
  return { blob: await response.blob(), filename: named ? named[1] : "" };
}

/**
 * Save a blob as a file: a temporary object URL behind a download link. The CSP has no
 * say over it (no script, style or fetch is involved), and the URL is revoked shortly
 * after, once the browser has started the download.
 */
function saveBlob(blob, filename) {
  const link = element("a");
  link.href = URL.createObjectURL(blob);
  link.download = filename;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

/** Download a file that needs the token under the name `filename`. */
async function download(url, filename) {
  const { blob } = await fetchFile(url);
  saveBlob(blob, filename);
}

// Sign-in and consent ---------------------------------------------------------------------

async function onLogin(event) {
  event.preventDefault();
  clearProblem(el.loginError);
  const username = el.loginUsername.value.trim();
  const password = el.loginPassword.value;
  if (!username || !password) return;
  el.loginSubmit.disabled = true;
  try {
    const answer = await login(username, password, el.loginCode.value.trim() || undefined);
    if (answer.role !== "patient") {
      if (answer.refresh_token) logout(answer.refresh_token).catch(() => {});
      el.loginError.replaceChildren(element("strong", "", at("account.notPatient")));
      el.loginError.hidden = false;
      return;
    }
    signIn.signedIn(answer);
    el.loginPassword.value = "";
    el.loginCode.value = "";
    show(el.loginCodeField, false);
    await openAccount();
  } catch (error) {
    const code = problemCodeOf(error);
    if (code === "totp-required") {
      show(el.loginCodeField, true);
      el.loginError.replaceChildren(element("strong", "", at("account.codeNeeded")));
      el.loginError.hidden = false;
      el.loginCode.focus();
    } else if (code === "invalid-credentials") {
      el.loginError.replaceChildren(element("strong", "", at("account.loginFailed")));
      el.loginError.hidden = false;
    } else {
      showProblem(el.loginError, error);
    }
  } finally {
    el.loginSubmit.disabled = false;
  }
}

async function askConsent() {
  clearProblem(el.consentError);
  try {
    const consent = await apiRequest("/privacy/consent", { token: page.token });
    el.consentText.textContent = consent.text ?? "";
    el.consentAccept.dataset.version = consent.version ?? "";
    showView("consent");
  } catch (error) {
    showView("consent");
    showProblem(el.consentError, error);
  }
}

async function acceptConsent() {
  el.consentAccept.disabled = true;
  try {
    await apiRequest("/privacy/consent", {
      method: "POST",
      body: { version: el.consentAccept.dataset.version },
      token: page.token,
    });
    await openAccount();
  } catch (error) {
    showProblem(el.consentError, error);
  } finally {
    el.consentAccept.disabled = false;
  }
}

// The account ---------------------------------------------------------------------------

async function openAccount() {
  clearProblem(el.error);
  try {
    page.profile = await api("/patient/profile");
  } catch (error) {
    if (problemCodeOf(error) === "processing-consent-required" || !page.token) return;
    if (error instanceof ApiError && error.status === 403) {
      signOut();
      el.loginError.replaceChildren(element("strong", "", at("account.notPatient")));
      el.loginError.hidden = false;
      return;
    }
    showView("account");
    showProblem(el.error, error);
    return;
  }
  el.name.textContent = page.profile.display_name;
  setAt(el.clinic, "account.clinic", { name: page.profile.clinic_name });
  showView("account");
  bell.start();
  await Promise.all([
    loadBookings(),
    loadSlots(),
    loadConsultations(),
    loadPrescriptions(),
    loadAccess(),
    loadRequests(),
    loadDelegations(),
  ]);
}

// Bookings ----------------------------------------------------------------------------------

async function loadBookings() {
  try {
    const answer = await api("/bookings");
    page.bookings = Array.isArray(answer.bookings) ? answer.bookings : [];
  } catch (error) {
    showProblem(el.error, error);
    return;
  }
  renderBookings();
}

function renderBookings() {
  el.bookingsList.replaceChildren(
    ...page.bookings.map((booking) => {
      const item = element("li", "account-item");
      item.dataset.bookingId = booking.id;
      item.setAttribute("data-testid", "account-booking");
      const main = element("div", "account-item-main");
      const time = element("time", "account-item-title", when(booking.starts_at));
      time.dateTime = booking.starts_at;
      main.append(time, element("span", "muted", doctorLine(booking)));
      const actions = element("div", "account-item-actions");
      const move = element("button", "btn btn-secondary btn-small");
      move.type = "button";
      move.setAttribute("data-testid", "account-booking-reschedule");
      setAt(move, "account.reschedule");
      move.addEventListener("click", () => startMoving(booking));
      const cancel = element("button", "btn btn-ghost btn-small account-danger");
      cancel.type = "button";
      cancel.setAttribute("data-testid", "account-booking-cancel");
      setAt(cancel, "account.cancel");
      actions.append(move, cancel);
      // Cancelling asks once more, in place (no browser dialog).
      const confirm = element("div", "account-confirm");
      confirm.hidden = true;
      const question = element("span");
      setAt(question, "account.cancelConfirm", { when: when(booking.starts_at) });
      const yes = element("button", "btn btn-danger btn-small");
      yes.type = "button";
      yes.setAttribute("data-testid", "account-booking-cancel-confirm");
      setAt(yes, "account.cancelYes");
      const no = element("button", "btn btn-secondary btn-small");
      no.type = "button";
      setAt(no, "account.cancelNo");
      confirm.append(question, yes, no);
      cancel.addEventListener("click", () => {
        confirm.hidden = false;
        yes.focus();
      });
      no.addEventListener("click", () => {
        confirm.hidden = true;
        cancel.focus();
      });
      yes.addEventListener("click", () => cancelBooking(booking, yes));
      item.append(main, actions, confirm);
      return item;
    }),
  );
  show(el.bookingsEmpty, page.bookings.length === 0);
}

function doctorLine(entry) {
  return entry.specialty ? `${entry.practitioner_name}, ${entry.specialty}` : entry.practitioner_name;
}

async function cancelBooking(booking, button) {
  button.disabled = true;
  try {
    await api(`/bookings/${encodeURIComponent(booking.id)}`, { method: "DELETE" });
    toast(at("account.cancelled"));
    if (page.moving?.id === booking.id) stopMoving();
    await Promise.all([loadBookings(), loadSlots(), loadConsultations(), loadAccess()]);
  } catch (error) {
    showProblem(el.error, error);
    button.disabled = false;
  }
}

function startMoving(booking) {
  page.moving = booking;
  setAt(el.rescheduleText, "account.rescheduling", { when: when(booking.starts_at) });
  show(el.rescheduleBanner, true);
  el.slotsDoctor.value = booking.practitioner_id;
  el.slotsDoctor.disabled = true;
  renderSlots();
  el.rescheduleBanner.scrollIntoView({ block: "nearest" });
}

function stopMoving() {
  page.moving = null;
  show(el.rescheduleBanner, false);
  el.slotsDoctor.disabled = false;
  renderSlots();
}

// Free slots --------------------------------------------------------------------------------

async function loadSlots() {
  const from = new Date();
  const to = new Date(from.getTime() + SLOT_DAYS * 86_400_000);
  const query = new URLSearchParams({ from: from.toISOString(), to: to.toISOString() });
  try {
    const answer = await api(`/slots?${query}`);
    page.slots = Array.isArray(answer.slots) ? answer.slots : [];
  } catch (error) {
    showProblem(el.error, error);
    return;
  }
  renderDoctors();
  renderSlots();
}

function renderDoctors() {
  const chosen = el.slotsDoctor.value;
  const doctors = new Map();
  for (const slot of page.slots) doctors.set(slot.practitioner_id, doctorLine(slot));
  for (const booking of page.bookings) doctors.set(booking.practitioner_id, doctorLine(booking));
  const any = el.slotsDoctor.options[0];
  el.slotsDoctor.replaceChildren(
    any,
    ...[...doctors].map(([id, label]) => {
      const option = element("option", "", label);
      option.value = id;
      return option;
    }),
  );
  el.slotsDoctor.value = doctors.has(chosen) ? chosen : "";
}

function renderSlots() {
  const doctor = page.moving ? page.moving.practitioner_id : el.slotsDoctor.value;
  const slots = page.slots.filter((slot) => !doctor || slot.practitioner_id === doctor);
  const days = new Map();
  for (const slot of slots) {
    const key = day(slot.starts_at);
    if (!days.has(key)) days.set(key, []);
    days.get(key).push(slot);
  }
  el.slotsDays.replaceChildren(
    ...[...days].map(([label, daySlots]) => {
      const group = element("div", "account-day");
      group.append(element("h3", "account-day-title", label));
      const buttons = element("div", "account-slots");
      for (const slot of daySlots) buttons.append(slotButton(slot, !doctor));
      group.append(buttons);
      return group;
    }),
  );
  show(el.slotsEmpty, slots.length === 0);
}

function slotButton(slot, withDoctor) {
  const button = element("button", "btn btn-secondary account-slot");
  button.type = "button";
  button.setAttribute("data-testid", "account-book-slot");
  button.dataset.slotId = slot.id;
  button.dataset.startsAt = slot.starts_at;
  const time = clock(slot.starts_at);
  button.append(element("span", "account-slot-time", time));
  if (withDoctor) button.append(element("span", "account-slot-doctor", slot.practitioner_name));
  button.setAttribute(
    "aria-label",
    at(page.moving ? "account.moveHere" : "account.bookSlot", { time: `${day(slot.starts_at)} ${time}` }),
  );
  button.addEventListener("click", () => (page.moving ? moveTo(slot) : book(slot)));
  return button;
}

async function book(slot) {
  if (page.busy) return;
  page.busy = true;
  clearProblem(el.error);
  try {
    const booking = await api("/bookings", { method: "POST", body: { slot_id: slot.id } });
    toast(at("account.booked", { when: when(booking.starts_at) }));
  } catch (error) {
    slotRefused(error);
  } finally {
    page.busy = false;
  }
  await Promise.all([loadBookings(), loadSlots(), loadConsultations(), loadAccess()]);
}

async function moveTo(slot) {
  if (page.busy || !page.moving) return;
  page.busy = true;
  clearProblem(el.error);
  const moving = page.moving;
  try {
    const booking = await api(`/bookings/${encodeURIComponent(moving.id)}/reschedule`, {
      method: "POST",
      body: { slot_id: slot.id },
    });
    toast(at("account.moved", { when: when(booking.starts_at) }));
    stopMoving();
  } catch (error) {
    slotRefused(error);
  } finally {
    page.busy = false;
  }
  await Promise.all([loadBookings(), loadSlots(), loadAccess()]);
}

function slotRefused(error) {
  if (problemCodeOf(error) === "slot-taken") {
    showProblem(el.error, error);
    el.error.replaceChildren(element("strong", "", at("account.slotTaken")));
  } else {
    showProblem(el.error, error);
  }
}

// Consultations -----------------------------------------------------------------------------

async function loadConsultations() {
  try {
    const answer = await api("/patient/consultations");
    page.consultations = Array.isArray(answer.consultations) ? answer.consultations : [];
  } catch (error) {
    showProblem(el.error, error);
    return;
  }
  renderConsultations();
}

function renderConsultations() {
  const found = page.consultations;
  el.consultationsList.replaceChildren(
    ...found.map((consultation) => {
      const item = element("li", "account-item");
      item.setAttribute("data-testid", "account-consultation");
      item.dataset.consultationId = consultation.id;
      const main = element("div", "account-item-main");
      const time = element("time", "account-item-title", when(consultation.starts_at));
      time.dateTime = consultation.starts_at;
      const state = element("span", `badge badge-${consultation.state}`);
      setAt(state, `state.${consultation.state}`);
      main.append(time, element("span", "muted", doctorLine(consultation)), state);
      const actions = element("div", "account-item-actions");
      for (const document_ of consultation.documents ?? []) {
        const button = element("button", "btn btn-secondary btn-small");
        button.type = "button";
        button.setAttribute("data-testid", "account-protocol-download");
        button.dataset.name = document_.name;
        setAt(button, "account.download", { name: document_.name });
        button.addEventListener("click", () =>
          download(document_.url, `${consultation.id}-${document_.name}`).catch((error) =>
            showProblem(el.error, error),
          ),
        );
        actions.append(button);
      }
      if (!consultation.documents?.length && consultation.state !== "cancelled") {
        const hint = element("span", "hint");
        setAt(hint, "account.noProtocol");
        actions.append(hint);
      }
      item.append(main, actions);
      return item;
    }),
  );
  show(el.consultationsEmpty, found.length === 0);
}

// Prescriptions -------------------------------------------------------------------------------

async function loadPrescriptions() {
  clearProblem(el.prescriptionsError);
  page.prescriptions = [];
  try {
    const answer = await api("/patient/prescriptions");
    page.prescriptions = Array.isArray(answer.prescriptions) ? answer.prescriptions : [];
  } catch (error) {
    // A service without the prescriptions API yet: nothing to show, not an error.
    if (!(error instanceof ApiError && error.status === 404)) showProblem(el.prescriptionsError, error);
  }
  renderPrescriptions();
}

function renderPrescriptions() {
  const found = page.prescriptions;
  el.prescriptionsList.replaceChildren(
    ...found.map((rx) => {
      const item = element("li", "account-item");
      item.setAttribute("data-testid", "account-prescription");
      item.dataset.prescriptionId = rx.id ?? "";
      const main = element("div", "account-item-main");
      main.append(element("span", "account-item-title", [rx.medication, rx.dose].filter(Boolean).join(", ")));
      const status = element("span", `badge account-rx-${rx.status}`);
      if (known(`rx.${rx.status}`)) setAt(status, `rx.${rx.status}`);
      else status.textContent = String(rx.status ?? "");
      main.append(status);
      const dates = element("span", "muted");
      const parts = [];
      if (rx.issued_at) parts.push(at("account.issuedAt", { date: dateOnly(rx.issued_at) }));
      if (rx.valid_until) parts.push(at("account.validUntil", { date: dateOnly(rx.valid_until) }));
      if (rx.dispensed_at) parts.push(at("account.dispensedAt", { date: dateOnly(rx.dispensed_at) }));
      dates.textContent = parts.join(" · ");
      main.append(dates);
      const actions = element("div", "account-item-actions");
      if (rx.pdf_url) {
        const pdf = element("button", "btn btn-secondary btn-small");
        pdf.type = "button";
        setAt(pdf, "account.prescriptionPdf");
        pdf.addEventListener("click", () =>
          download(rx.pdf_url, `prescription-${rx.verification_id ?? rx.id}.pdf`).catch((error) =>
            showProblem(el.prescriptionsError, error),
          ),
        );
        actions.append(pdf);
      }
      if (rx.verify_url && /^(https?:\/\/|\/)/.test(rx.verify_url)) {
        const verify = element("a", "btn btn-ghost btn-small");
        verify.href = rx.verify_url;
        verify.rel = "noopener noreferrer";
        setAt(verify, "account.verify");
        actions.append(verify);
      }
      item.append(main, actions);
      return item;
    }),
  );
  show(el.prescriptionsEmpty, found.length === 0);
}

// Who accessed the card -------------------------------------------------------------------------

async function loadAccess() {
  if (!page.profile) return;
  clearProblem(el.accessError);
  const entries = [];
  let url = `/fhir/AuditEvent?${new URLSearchParams({
    patient: page.profile.patient_id,
    _count: String(AUDIT_PAGE),
  })}`;
  try {
    for (let pages = 0; url && pages < AUDIT_MAX_PAGES; pages += 1) {
      const bundle = await fetchJson(url);
      for (const entry of bundle.entry ?? []) entries.push(entry.resource);
      const next = (bundle.link ?? []).find((link) => link.relation === "next");
      url = next ? new URL(next.url, location.href).pathname + new URL(next.url, location.href).search : "";
    }
  } catch (error) {
    showProblem(el.accessError, error);
    return;
  }
  page.access = entries.reverse();
  await loadActors(page.access.map(actorOf).filter(Boolean));
  renderAccess();
}

function actorOf(event) {
  return event.agent?.[0]?.who?.identifier?.value ?? "";
}

async function loadActors(ids) {
  const unknown = [...new Set(ids)].filter((id) => !page.actors.has(id)).slice(0, 100);
  if (unknown.length === 0) return;
  const query = new URLSearchParams();
  for (const id of unknown) query.append("id", id);
  try {
    const answer = await api(`/patient/audit-actors?${query}`);
    for (const actor of answer.actors ?? []) page.actors.set(actor.id, actor);
  } catch {
    // Names are a courtesy: the roles are still shown.
  }
}

function renderAccess() {
  const shown = page.access.slice(0, page.accessShown);
  el.accessRows.replaceChildren(...shown.map(accessRow));
  show(el.accessTable, shown.length > 0);
  show(el.accessEmpty, page.access.length === 0);
  show(el.accessMore, page.access.length > shown.length);
}

function accessRow(event) {
  const row = element("tr");
  row.setAttribute("data-testid", "account-access-entry");
  const recorded = element("time", "", when(event.recorded));
  recorded.dateTime = event.recorded ?? "";
  const whenCell = element("td");
  whenCell.append(recorded);
  row.append(whenCell, element("td", "", who(event)), element("td", "", what(event)));
  const outcome = element("td", `account-outcome account-outcome-${event.outcome}`);
  row.dataset.outcome = String(event.outcome ?? "");
  if (known(`outcome.${event.outcome}`)) setAt(outcome, `outcome.${event.outcome}`);
  else outcome.textContent = String(event.outcome ?? "");
  row.append(outcome);
  return row;
}

function who(event) {
  const id = actorOf(event);
  const actor = page.actors.get(id);
  if (actor?.you || id === page.profile?.user_id) return at("account.you");
  const role = event.agent?.[0]?.role?.[0]?.text ?? actor?.role ?? "anonymous";
  const roleName = known(`role.${role}`) ? at(`role.${role}`) : role;
  return actor?.display_name ? at("account.named", { role: roleName, name: actor.display_name }) : roleName;
}

function what(event) {
  const code = event.subtype?.[0]?.code ?? FHIR_ACTIONS[event.action] ?? "";
  const action = known(`action.${code}`) ? at(`action.${code}`) : at("action.other", { code });
  const named = (event.entity ?? []).find((entity) => entity.name)?.name;
  if (!named) return action;
  const resource = known(`resource.${named}`) ? at(`resource.${named}`) : named;
  return `${action}: ${resource}`;
}

// My data ---------------------------------------------------------------------------------------

/** Problem codes of the privacy API that the page explains in its own words. */
const DATA_PROBLEMS = new Set(["delegate-not-found", "invalid-sections", "invalid-expiry", "delegation-not-found"]);

/** Show one of the page's sentences in an alert (re-rendered on a language switch). */
function alertText(target, key) {
  const sentence = element("strong");
  setAt(sentence, key);
  target.replaceChildren(sentence);
  target.hidden = false;
}

/**
 * Show a refusal of the API next to the form it answers: in the page's words when its
 * problem code is one the page knows (or `key` is given), else the generic summary with
 * the server's explanation.
 */
function refuse(target, error, key) {
  const code = problemCodeOf(error);
  const chosen = DATA_PROBLEMS.has(code) ? `problem.${code}` : key;
  if (chosen) alertText(target, chosen);
  else showProblem(target, error);
}

/** A value the API names (a status, a kind, a section) in the page's words if it has them. */
function labelled(target, prefix, value) {
  const key = `${prefix}.${value}`;
  if (known(key)) setAt(target, key);
  else target.textContent = String(value ?? "");
}

async function exportData() {
  clearProblem(el.exportError);
  el.exportButton.disabled = true;
  try {
    const { blob, filename } = await fetchFile("/api/v1/privacy/export", "POST");
    saveBlob(blob, filename || `telemed-export-${new Date().toISOString().slice(0, 10)}.json`);
    toast(at("data.exported"));
  } catch (error) {
    if (page.token) showProblem(el.exportError, error);
    return;
  } finally {
    el.exportButton.disabled = false;
  }
  await loadAccess(); // the export is on the record the patient reads
}

async function loadRequests() {
  try {
    const answer = await api("/privacy/requests");
    page.requests = Array.isArray(answer.requests) ? answer.requests : [];
  } catch (error) {
    showProblem(el.requestsError, error);
    return;
  }
  renderRequests();
}

function renderRequests() {
  el.requestsList.replaceChildren(...page.requests.map(requestRow));
  show(el.requestsEmpty, page.requests.length === 0);
}

function requestRow(request) {
  const item = element("li", "account-item");
  item.setAttribute("data-testid", "account-request");
  item.dataset.requestId = request.id ?? "";
  item.dataset.kind = request.kind ?? "";
  item.dataset.status = request.status ?? "";
  const main = element("div", "account-item-main");
  const kind = element("span", "account-item-title");
  labelled(kind, "request", request.kind);
  const status = element("span", `badge account-status-${request.status}`);
  labelled(status, "request", request.status);
  const dates = element("span", "muted");
  const parts = [at("data.filedAt", { date: when(request.filed_at) })];
  // An erasure is answered by the law as it is filed; only a person's answer has a date.
  if (request.resolved_at && request.status !== "restricted") {
    parts.push(at("data.resolvedAt", { date: when(request.resolved_at) }));
  }
  dates.textContent = parts.join(" · ");
  main.append(kind, status, dates);
  item.append(main);
  if (request.details) item.append(element("p", "account-item-text", request.details));
  if (request.reason && request.status !== "open") {
    const reason = element("p", "account-item-text account-request-reason");
    reason.setAttribute("data-testid", "account-request-reason");
    setAt(reason, "data.reason", { reason: request.reason });
    item.append(reason);
  }
  return item;
}

async function fileCorrection(event) {
  event.preventDefault();
  clearProblem(el.requestsError);
  const details = el.correctionDetails.value.trim();
  if (!details) {
    el.correctionDetails.setAttribute("aria-invalid", "true");
    alertText(el.requestsError, "data.correctionEmpty");
    el.correctionDetails.focus();
    return;
  }
  el.correctionDetails.removeAttribute("aria-invalid");
  el.correctionSubmit.disabled = true;
  try {
    await api("/privacy/requests", { method: "POST", body: { kind: "correction", details } });
    el.correctionDetails.value = "";
    toast(at("data.correctionFiled"));
  } catch (error) {
    // The kind is the page's own: a 400 is about what the patient wrote.
    refuse(el.requestsError, error, error instanceof ApiError && error.status === 400 ? "problem.details" : undefined);
    return;
  } finally {
    el.correctionSubmit.disabled = false;
  }
  await Promise.all([loadRequests(), loadAccess()]);
}

/** Erasure asks once more, in place, and says first what the law keeps. */
function askErasure() {
  show(el.erasureConfirm, true);
  el.erasure.setAttribute("aria-expanded", "true");
  el.erasureYes.focus();
}

function keepData() {
  show(el.erasureConfirm, false);
  el.erasure.setAttribute("aria-expanded", "false");
  el.erasure.focus();
}

async function fileErasure() {
  clearProblem(el.requestsError);
  el.erasureYes.disabled = true;
  try {
    await api("/privacy/requests", { method: "POST", body: { kind: "erasure" } });
    show(el.erasureConfirm, false);
    el.erasure.setAttribute("aria-expanded", "false");
    toast(at("data.erasureFiled"));
  } catch (error) {
    refuse(el.requestsError, error);
    return;
  } finally {
    el.erasureYes.disabled = false;
  }
  await Promise.all([loadRequests(), loadAccess()]);
}

async function loadDelegations() {
  try {
    const answer = await api("/delegations");
    page.delegations = Array.isArray(answer.delegations) ? answer.delegations : [];
  } catch (error) {
    showProblem(el.delegationsError, error);
    return;
  }
  renderDelegations();
}

function renderDelegations() {
  el.delegationsList.replaceChildren(...page.delegations.map(delegationRow));
  show(el.delegationsEmpty, page.delegations.length === 0);
}

function delegationRow(delegation) {
  const item = element("li", "account-item");
  item.setAttribute("data-testid", "account-delegation");
  item.dataset.delegationId = delegation.id ?? "";
  item.dataset.status = delegation.status ?? "";
  const main = element("div", "account-item-main");
  const username = delegation.delegate?.username ?? "";
  const name = delegation.delegate?.display_name || username;
  main.append(element("span", "account-item-title", name));
  if (username && username !== name) main.append(element("span", "muted", username));
  const status = element("span", `badge account-status-${delegation.status}`);
  labelled(status, "delegation", delegation.status);
  main.append(status);
  const sections = (delegation.sections ?? []).map((section) =>
    known(`section.${section}`) ? at(`section.${section}`) : String(section),
  );
  main.append(element("span", "", sections.join(", ")));
  main.append(element("span", "muted", at("data.until", { date: dateOnly(delegation.expires_at) })));
  item.append(main);
  if (delegation.status === "active") {
    const actions = element("div", "account-item-actions");
    const revoke = element("button", "btn btn-ghost btn-small account-danger");
    revoke.type = "button";
    revoke.setAttribute("data-testid", "account-delegation-revoke");
    revoke.setAttribute("aria-label", at("data.revokeLabel", { name }));
    setAt(revoke, "data.revoke");
    revoke.addEventListener("click", () => revokeDelegation(delegation, revoke));
    actions.append(revoke);
    item.append(actions);
  }
  return item;
}

/** The end of a calendar day ("2026-12-31") in the patient's time zone: "until" includes it. */
function endOfDay(value) {
  const parts = /^(\d{4})-(\d{2})-(\d{2})$/.exec(value);
  if (!parts) return null;
  const date = new Date(Number(parts[1]), Number(parts[2]) - 1, Number(parts[3]), 23, 59, 59);
  return Number.isNaN(date.getTime()) ? null : date;
}

/** Today as the value of a date input, in the patient's time zone. */
function today() {
  const now = new Date();
  const pad = (n) => String(n).padStart(2, "0");
  return `${now.getFullYear()}-${pad(now.getMonth() + 1)}-${pad(now.getDate())}`;
}

async function grantDelegation(event) {
  event.preventDefault();
  clearProblem(el.delegationsError);
  const delegate = el.delegateUsername.value.trim();
  const boxes = [...el.delegateForm.querySelectorAll('input[name="section"]')];
  const sections = boxes.filter((box) => box.checked).map((box) => box.value);
  const expires = endOfDay(el.delegateExpires.value);
  const missing = !delegate
    ? ["data.needUsername", el.delegateUsername]
    : sections.length === 0
      ? ["data.needSections", boxes[0]]
      : !expires
        ? ["data.needExpiry", el.delegateExpires]
        : expires <= new Date()
          ? ["data.pastExpiry", el.delegateExpires]
          : null;
  if (missing) {
    alertText(el.delegationsError, missing[0]);
    missing[1]?.focus();
    return;
  }
  el.delegateSubmit.disabled = true;
  try {
    await api("/delegations", {
      method: "POST",
      body: { delegate, sections, expires_at: expires.toISOString() },
    });
    el.delegateForm.reset();
    toast(at("data.delegated"));
  } catch (error) {
    refuse(el.delegationsError, error);
    return;
  } finally {
    el.delegateSubmit.disabled = false;
  }
  await Promise.all([loadDelegations(), loadAccess()]);
}

async function revokeDelegation(delegation, button) {
  clearProblem(el.delegationsError);
  button.disabled = true;
  try {
    await api(`/delegations/${encodeURIComponent(delegation.id)}`, { method: "DELETE" });
    toast(at("data.revoked"));
  } catch (error) {
    refuse(el.delegationsError, error);
    button.disabled = false;
    return;
  }
  await Promise.all([loadDelegations(), loadAccess()]);
}

// Start ----------------------------------------------------------------------------------------

function rerender() {
  applyPageStrings();
  if (page.profile) {
    renderBookings();
    renderSlots();
    renderAccess();
    renderConsultations();
    renderPrescriptions();
    renderRequests();
    renderDelegations();
  }
}

function start() {
  const title = document.querySelector("title");
  if (title) delete title.dataset.i18n; // the page's own strings name it
  initLanguage(/** @type {HTMLSelectElement} */ (byId("lang-select")));
  applyPageStrings();
  onLanguageChange(rerender);
  el.loginForm.addEventListener("submit", onLogin);
  el.consentAccept.addEventListener("click", acceptConsent);
  el.logout.addEventListener("click", () => signOut());
  el.slotsDoctor.addEventListener("change", renderSlots);
  el.rescheduleCancel.addEventListener("click", stopMoving);
  el.accessRefresh.addEventListener("click", loadAccess);
  el.accessMore.addEventListener("click", () => {
    page.accessShown += ACCESS_STEP;
    renderAccess();
  });
  el.exportButton.addEventListener("click", exportData);
  el.correctionForm.addEventListener("submit", fileCorrection);
  el.erasure.addEventListener("click", askErasure);
  el.erasureNo.addEventListener("click", keepData);
  el.erasureYes.addEventListener("click", fileErasure);
  el.delegateForm.addEventListener("submit", grantDelegation);
  el.delegateExpires.min = today();
  signIn.takeFromFragment();
  if (page.token) openAccount();
  else showView("login");
}

start();
