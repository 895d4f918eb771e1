/**
 * The public e-prescription verification page (/rx/<identifier>): shows what the
 * prescription's QR code stands for (GET /api/v1/rx/<identifier>) and lets a pharmacist
 * sign in and mark it dispensed (POST /api/v1/rx/<identifier>/dispense).
 *
 * Its strings live here (the page is small and public); the language follows the shared
 * switch. The pharmacist's token stays in this tab only (sessionStorage).
 */

import { ApiError, apiRequest, login, problemCodeOf } from "./api.js";
import { getLanguage, getLocale, onLanguageChange } from "./i18n.js";
import { byId, initLanguage, storageGet, storageSet } from "./ui.js";

const TOKEN_KEY = "telemed.rx.token";

const TEXTS = {
  ru: {
    title: "Проверка рецепта — Телемед",
    heading: "Проверка электронного рецепта",
    "status.loading": "Загрузка…",
    "status.active": "Рецепт действителен — препарат можно отпустить",
    "status.dispensed": "Препарат по рецепту уже отпущен",
    "status.expired": "Срок действия рецепта истёк",
    "status.cancelled": "Рецепт отменён врачом",
    "status.not-found": "Рецепт не найден: проверьте код",
    "status.rate-limited": "Слишком много запросов: повторите через минуту",
    "status.error": "Не удалось проверить рецепт: нет связи с сервером",
    medication: "Препарат (МНН, форма)",
    dose: "Доза",
    route: "Путь введения",
    frequency: "Кратность приёма",
    duration: "Длительность",
    days: "{n} дн.",
    quantity: "Отпустить",
    issued: "Дата выписки",
    validUntil: "Действителен до",
    patient: "Пациент",
    doctor: "Врач",
    clinic: "Медицинская организация",
    dispensed: "Отпущен",
    loginHint: "Войдите как фармацевт, чтобы отметить отпуск.",
    username: "Имя пользователя",
    password: "Пароль",
    login: "Войти",
    dispense: "Отпустить препарат",
    "problem.login": "Неверное имя пользователя или пароль.",
    "problem.role": "Отпуск отмечает только фармацевт.",
    "problem.conflict": "Отпуск невозможен: статус рецепта изменился.",
    "problem.totp": "Эта учётная запись входит с кодом второго фактора: войдите в рабочее место.",
  },
  en: {
    title: "Prescription check — Telemed",
    heading: "E-prescription check",
    "status.loading": "Loading…",
    "status.active": "Valid — may be dispensed",
    "status.dispensed": "Already dispensed",
    "status.expired": "Expired",
    "status.cancelled": "Cancelled by the doctor",
    "status.not-found": "No such prescription: check the code",
    "status.rate-limited": "Too many requests: try again in a minute",
    "status.error": "Could not check the prescription: the server is unreachable",
    medication: "Medication (INN, form)",
    dose: "Dose",
    route: "Route",
    frequency: "Frequency",
    duration: "Duration",
    days: "{n} days",
    quantity: "Dispense",
    issued: "Issued",
    validUntil: "Valid until",
    patient: "Patient",
    doctor: "Doctor",
    clinic: "Clinic",
    dispensed: "Dispensed",
    loginHint: "Sign in as a pharmacist to mark it dispensed.",
    username: "Username",
    password: "Password",
    login: "Sign in",
    dispense: "Dispense",
    "problem.login": "Wrong username or password.",
    "problem.role": "Only a pharmacist marks a prescription dispensed.",
    "problem.conflict": "Cannot dispense: the prescription's status changed.",
    "problem.totp": "This account signs in with a second factor: use the workplace.",
  },
};

const identifier = decodeURIComponent(window.location.pathname.split("/").pop() ?? "");
/** @type {{status: string, data: Record<string, any>|null}} */
const state = { status: "loading", data: null };

function text(key, params) {
  const template = TEXTS[getLanguage()]?.[key] ?? TEXTS.ru[key] ?? key;
  return params ? template.replace(/\{(\w+)\}/g, (_, name) => String(params[name] ?? "")) : template;
}

function formatDay(value) {
  if (!value) return "";
  // A date alone ("2027-01-25") is a calendar day: format it as one, in UTC.
  const moment = new Date(value.length === 10 ? `${value}T00:00:00Z` : value);
  if (Number.isNaN(moment.getTime())) return value;
  const options = { day: "2-digit", month: "2-digit", year: "numeric" };
  if (value.length === 10) options.timeZone = "UTC";
  return new Intl.DateTimeFormat(getLocale(), options).format(moment);
}

function formatMoment(value) {
  const moment = new Date(value);
  if (Number.isNaN(moment.getTime())) return "";
  return new Intl.DateTimeFormat(getLocale(), { dateStyle: "short", timeStyle: "short" }).format(
    moment,
  );
}

function render() {
  document.title = text("title");
  for (const el of document.querySelectorAll("[data-rx-text]")) {
    el.textContent = text(el.dataset.rxText);
  }
  const status = byId("rx-status");
  status.dataset.status = state.status;
  status.textContent = text(`status.${state.status}`);
  const data = state.data;
  byId("rx-details").hidden = data === null;
  byId("rx-pharmacy").hidden = !(data && state.status === "active");
  if (!data) return;
  byId("rx-medication").textContent = data.medication;
  byId("rx-dose").textContent = data.dose;
  byId("rx-route").textContent = data.route;
  byId("rx-frequency").textContent = data.frequency;
  byId("rx-duration").textContent = text("days", { n: data.duration_days });
  byId("rx-quantity").textContent = data.quantity;
  byId("rx-issued").textContent = formatDay(data.issued_at);
  byId("rx-valid-until").textContent = formatDay(data.valid_until);
  byId("rx-patient").textContent = data.patient;
  byId("rx-doctor").textContent = data.doctor;
  byId("rx-clinic").textContent = data.clinic;
  const dispensed = Boolean(data.dispensed_at);
  byId("rx-dispensed-label").hidden = !dispensed;
  byId("rx-dispensed").hidden = !dispensed;
  if (dispensed) {
    const where = data.pharmacy ? `, ${data.pharmacy}` : "";
    byId("rx-dispensed").textContent = `${formatMoment(data.dispensed_at)}${where}`;
  }
}

function show(data) {
  state.data = data;
  state.status = data.status;
  render();
}

function showProblem(key) {
  const box = byId("rx-problem");
  box.hidden = !key;
  box.textContent = key ? text(key) : "";
}

async function load() {
  try {
    show(await apiRequest(`/rx/${encodeURIComponent(identifier)}`));
  } catch (error) {
    state.data = null;
    if (error instanceof ApiError && error.status === 404) state.status = "not-found";
    else if (error instanceof ApiError && error.status === 429) state.status = "rate-limited";
    else state.status = "error";
    render();
  }
}

async function dispense() {
  const token = storageGet(sessionStorage, TOKEN_KEY);
  if (!token) {
    byId("rx-login").hidden = false;
    byId("rx-username").focus();
    return;
  }
  const button = byId("rx-dispense");
  button.disabled = true;
  try {
    show(
      await apiRequest(`/rx/${encodeURIComponent(identifier)}/dispense`, {
        method: "POST",
        token,
      }),
    );
    showProblem(null);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      storageSet(sessionStorage, TOKEN_KEY, null);
      byId("rx-login").hidden = false;
    } else if (error instanceof ApiError && error.status === 403) {
      storageSet(sessionStorage, TOKEN_KEY, null);
      showProblem("problem.role");
    } else if (error instanceof ApiError && error.status === 409) {
      showProblem("problem.conflict");
      await load();
    } else {
      state.status = "error";
      render();
    }
  } finally {
    button.disabled = false;
  }
}

async function signIn(event) {
  event.preventDefault();
  try {
    const answer = await login(byId("rx-username").value.trim(), byId("rx-password").value);
    if (answer.role !== "pharmacist") {
      showProblem("problem.role");
      return;
    }
    storageSet(sessionStorage, TOKEN_KEY, answer.access_token);
    byId("rx-password").value = "";
    byId("rx-login").hidden = true;
    showProblem(null);
    await dispense();
  } catch (error) {
    showProblem(problemCodeOf(error) === "totp-required" ? "problem.totp" : "problem.login");
  }
}

initLanguage(/** @type {HTMLSelectElement} */ (byId("lang-select")));
onLanguageChange(render);
byId("rx-dispense").addEventListener("click", dispense);
byId("rx-login").addEventListener("submit", signIn);
render();
load();
