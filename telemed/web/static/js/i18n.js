/**
 * Every visible string of the telemed pages, in Russian (the default) and English.
 *
 * Static markup names its strings declaratively:
 *   data-i18n="key"                      → textContent
 *   data-i18n-attr="aria-label=key;title=key2" → attributes
 *   data-i18n-args='{"n": 1}'            → parameters for both
 * Code that renders text calls {@link setText} / {@link setAttrText}, which record the
 * key on the element, so switching the language re-renders everything in place.
 */

const STORAGE_KEY = "telemed.lang";

/** @type {readonly string[]} */
export const LANGUAGES = Object.freeze(["ru", "en"]);

const LOCALES = { ru: "ru-RU", en: "en-GB" };

const ru = {
  "common.brand": "Телемед",
  "common.language": "Язык интерфейса",
  "common.skip": "Перейти к содержимому",
  "common.reload": "Обновить страницу",
  "common.loading": "Загрузка…",

  "state.idle": "Подготовка",
  "state.idle.left": "Вы вышли",
  "state.idle.error": "Нет подключения",
  "state.idle.offline": "Нет связи с сервером",
  "state.lobby.doctor": "Ожидание пациента",
  "state.lobby.patient": "Зал ожидания",
  "state.connecting": "Соединение…",
  "state.connected": "На связи",
  "state.reconnecting": "Восстановление связи…",
  "state.ended": "Консультация завершена",

  "ctl.toolbar": "Управление звонком",
  "ctl.mic": "Микрофон",
  "ctl.mic.aria": "Выключить микрофон",
  "ctl.cam": "Камера",
  "ctl.cam.aria": "Выключить камеру",
  "ctl.end": "Завершить",
  "ctl.end.aria": "Завершить консультацию для всех участников",
  "ctl.leave": "Выйти",
  "ctl.leave.aria": "Выйти из консультации",
  "ctl.unmuteRemote": "Включить звук собеседника",

  "video.local": "Ваше видео",
  "video.remote.doctor": "Видео пациента",
  "video.remote.patient": "Видео врача",

  "chat.title": "Чат",
  "chat.label": "Сообщение",
  "chat.placeholder": "Напишите сообщение…",
  "chat.send": "Отправить",
  "chat.empty": "Сообщений пока нет",
  "chat.closed": "Чат откроется, когда врач впустит вас в консультацию",
  "chat.you": "вы",
  "chat.log": "История сообщений",

  "media.requesting": "Разрешите доступ к камере и микрофону в запросе браузера",
  "media.help.title": "Нет доступа к камере и микрофону",
  "media.help.denied":
    "Браузер запретил доступ. Нажмите на значок камеры или замка слева в адресной строке, разрешите камеру и микрофон для этого сайта и нажмите «Повторить».",
  "media.help.deniedMobile":
    "На телефоне доступ также нужно разрешить браузеру в настройках системы: «Настройки» → приложение браузера → «Камера» и «Микрофон».",
  "media.help.notFound":
    "Камера и микрофон не найдены. Подключите устройство (или гарнитуру) и нажмите «Повторить».",
  "media.help.busy":
    "Камера или микрофон заняты другой программой (например, другой видеосвязью). Закройте её и нажмите «Повторить».",
  "media.help.insecure":
    "Браузер не даёт доступ к камере на этой странице. Откройте ссылку в актуальной версии Chrome, Firefox, Safari или Яндекс Браузера.",
  "media.help.other": "Не удалось включить камеру и микрофон.",
  "media.help.withoutNote":
    "Можно продолжить без камеры и микрофона: вы будете видеть и слышать врача и сможете писать в чат.",
  "media.retry": "Повторить",
  "media.continue": "Продолжить без камеры и микрофона",
  "media.audioOnly": "Камера недоступна: врач будет только слышать вас",
  "media.videoOnly": "Микрофон недоступен: врач вас не услышит, пишите в чат",
  "media.doctorNone": "Камера и микрофон недоступны: пациент не увидит и не услышит вас",

  "code.ticket_missing":
    "Ссылка неполная. Откройте ссылку из сообщения клиники целиком.",
  "code.ticket_invalid": "Ссылка недействительна. Попросите в клинике новую ссылку.",
  "code.ticket_expired": "Срок действия ссылки истёк. Попросите в клинике новую ссылку.",
  "code.wrong_consultation":
    "Ссылка относится к другой консультации. Попросите в клинике новую ссылку.",
  "code.rate_limited": "Слишком много сообщений подряд, подождите немного",
  "code.not_admitted": "Дождитесь, пока врач впустит вас в консультацию",
  "code.not_joined": "Соединение ещё не готово, повторите через секунду",
  "code.unknown_peer": "Этого участника уже нет в консультации",
  "code.invalid_message": "Сообщение не принято: {message}",
  "code.internal_error": "Ошибка на сервере, повторите попытку",
  "code.offline": "Нет связи с сервером, повторите, когда связь восстановится",
  "code.timeout": "Сервер не ответил вовремя, повторите попытку",
  "code.server_disconnect": "Сервер закрыл соединение",
  "code.generic": "Не получилось: {message}",

  "fatal.title": "Не удалось подключиться",
  "fatal.titleDoctor": "Соединение с консультацией потеряно",

  "api.network": "Нет связи с сервером. Проверьте подключение к интернету.",
  "api.status.400": "Запрос не принят",
  "api.status.401": "Требуется вход",
  "api.status.403": "Недостаточно прав",
  "api.status.404": "Не найдено",
  "api.status.409": "Действие сейчас невозможно",
  "api.status.422": "Данные не приняты",
  "api.status.429": "Слишком много запросов, подождите немного",
  "api.status.5xx": "Ошибка на сервере, попробуйте позже",
  "api.status.other": "Ошибка {status}",

  "doctor.pageTitle": "Кабинет врача — Телемед",
  "doctor.console": "Кабинет врача",
  "doctor.logout": "Выйти из системы",
  "login.title": "Вход для врача",
  "login.username": "Имя пользователя",
  "login.password": "Пароль",
  "login.submit": "Войти",
  "login.busy": "Вход…",
  "login.failed": "Неверное имя пользователя или пароль",
  "login.expired": "Сеанс истёк, войдите снова",
  "list.title": "Приём на сегодня",
  "list.refresh": "Обновить",
  "list.empty": "На сегодня записей нет",
  "list.time": "Время",
  "list.patient": "Пациент",
  "list.state": "Статус",
  "appt.state.scheduled": "Запланирована",
  "appt.state.waiting": "Пациент ожидает",
  "appt.state.in_progress": "Идёт",
  "appt.state.finished": "Завершена",
  "appt.state.cancelled": "Отменена",
  "appt.start": "Начать консультацию",
  "appt.resume": "Продолжить",
  "appt.starting": "Запуск…",
  "appt.startAria": "Начать консультацию: {name}, {time}",
  "appt.resumeAria": "Продолжить консультацию: {name}, {time}",
  "call.patientLink": "Ссылка для пациента",
  "call.copy": "Копировать",
  "call.copied": "Ссылка скопирована",
  "call.copyFailed": "Не удалось скопировать: выделите ссылку и скопируйте вручную",
  "call.linkHint": "Отправьте ссылку пациенту по защищённому каналу. Ссылка действует ограниченное время.",
  "call.waitingTitle": "Зал ожидания",
  "call.waitingCount": "В ожидании: {n}",
  "call.waitingEmpty": "Пока никто не ожидает",
  "call.admit": "Впустить",
  "call.admitAria": "Впустить: {name}",
  "call.backToList": "К списку приёма",
  "call.endedText": "Консультация завершена для всех участников.",
  "stage.doctor.lobby":
    "Пациент ещё не подключился. Отправьте ему ссылку и впустите из зала ожидания.",
  "stage.doctor.connecting": "Соединение с пациентом…",
  "stage.doctor.reconnecting": "Связь прервалась, восстанавливаем…",
  "stage.doctor.idle": "Подключение к серверу…",

  "patient.pageTitle": "Видеоконсультация — Телемед",
  "patient.heading": "Видеоконсультация",
  "lobby.connecting": "Подключение к серверу…",
  "lobby.wait": "Ожидайте: врач скоро подключит вас",
  "lobby.notStarted":
    "Врач ещё не начал консультацию. Оставайтесь на этой странице — вы попадёте в зал ожидания автоматически.",
  "lobby.connectingDoctor": "Врач впустил вас. Соединение…",
  "lobby.reconnecting": "Связь прервалась, восстанавливаем…",
  "lobby.media": "Разрешите доступ к камере и микрофону в запросе браузера",
  "left.title": "Вы вышли из консультации",
  "left.text": "Если вы вышли случайно, вернитесь — врач снова впустит вас.",
  "left.rejoin": "Вернуться в консультацию",
  "ended.title": "Консультация завершена",
  "ended.text": "Спасибо! Эту страницу можно закрыть.",
};

const en = {
  "common.brand": "Telemed",
  "common.language": "Interface language",
  "common.skip": "Skip to content",
  "common.reload": "Reload the page",
  "common.loading": "Loading…",

  "state.idle": "Getting ready",
  "state.idle.left": "You left",
  "state.idle.error": "Not connected",
  "state.idle.offline": "Server unreachable",
  "state.lobby.doctor": "Waiting for the patient",
  "state.lobby.patient": "Waiting room",
  "state.connecting": "Connecting…",
  "state.connected": "Connected",
  "state.reconnecting": "Reconnecting…",
  "state.ended": "Consultation ended",

  "ctl.toolbar": "Call controls",
  "ctl.mic": "Microphone",
  "ctl.mic.aria": "Mute microphone",
  "ctl.cam": "Camera",
  "ctl.cam.aria": "Turn camera off",
  "ctl.end": "End",
  "ctl.end.aria": "End the consultation for everyone",
  "ctl.leave": "Leave",
  "ctl.leave.aria": "Leave the consultation",
  "ctl.unmuteRemote": "Turn on the other side's sound",

  "video.local": "Your video",
  "video.remote.doctor": "Patient's video",
  "video.remote.patient": "Doctor's video",

  "chat.title": "Chat",
  "chat.label": "Message",
  "chat.placeholder": "Type a message…",
  "chat.send": "Send",
  "chat.empty": "No messages yet",
  "chat.closed": "The chat opens once the doctor admits you",
  "chat.you": "you",
  "chat.log": "Message history",

  "media.requesting": "Allow access to your camera and microphone when the browser asks",
  "media.help.title": "No access to the camera and microphone",
  "media.help.denied":
    "The browser blocked access. Click the camera or padlock icon on the left of the address bar, allow the camera and microphone for this site, then press “Try again”.",
  "media.help.deniedMobile":
    "On a phone, the browser app itself also needs the permission: Settings → your browser → Camera and Microphone.",
  "media.help.notFound":
    "No camera or microphone found. Connect a device (or a headset) and press “Try again”.",
  "media.help.busy":
    "The camera or microphone is used by another program (for example, another video call). Close it and press “Try again”.",
  "media.help.insecure":
    "The browser does not allow the camera on this page. Open the link in an up-to-date Chrome, Firefox, Safari or Yandex Browser.",
  "media.help.other": "Could not turn on the camera and microphone.",
  "media.help.withoutNote":
    "You can continue without them: you will see and hear the doctor and can write in the chat.",
  "media.retry": "Try again",
  "media.continue": "Continue without camera and microphone",
  "media.audioOnly": "Camera unavailable: the doctor will only hear you",
  "media.videoOnly": "Microphone unavailable: the doctor will not hear you, please use the chat",
  "media.doctorNone": "Camera and microphone unavailable: the patient will not see or hear you",

  "code.ticket_missing": "The link is incomplete. Open the full link from the clinic's message.",
  "code.ticket_invalid": "The link is not valid. Please ask the clinic for a new link.",
  "code.ticket_expired": "The link has expired. Please ask the clinic for a new link.",
  "code.wrong_consultation":
    "The link belongs to another consultation. Please ask the clinic for a new link.",
  "code.rate_limited": "Too many messages at once, please wait a moment",
  "code.not_admitted": "Please wait until the doctor admits you",
  "code.not_joined": "The connection is not ready yet, try again in a second",
  "code.unknown_peer": "This participant has already left the consultation",
  "code.invalid_message": "Message not accepted: {message}",
  "code.internal_error": "Server error, please try again",
  "code.offline": "No connection to the server, try again once it is back",
  "code.timeout": "The server did not answer in time, please try again",
  "code.server_disconnect": "The server closed the connection",
  "code.generic": "That did not work: {message}",

  "fatal.title": "Could not connect",
  "fatal.titleDoctor": "Lost the connection to the consultation",

  "api.network": "No connection to the server. Check your internet connection.",
  "api.status.400": "Request not accepted",
  "api.status.401": "Sign-in required",
  "api.status.403": "Not allowed",
  "api.status.404": "Not found",
  "api.status.409": "This cannot be done right now",
  "api.status.422": "Data not accepted",
  "api.status.429": "Too many requests, please wait a moment",
  "api.status.5xx": "Server error, please try later",
  "api.status.other": "Error {status}",

  "doctor.pageTitle": "Doctor's console — Telemed",
  "doctor.console": "Doctor's console",
  "doctor.logout": "Sign out",
  "login.title": "Doctor sign-in",
  "login.username": "Username",
  "login.password": "Password",
  "login.submit": "Sign in",
  "login.busy": "Signing in…",
  "login.failed": "Wrong username or password",
  "login.expired": "Your session has expired, please sign in again",
  "list.title": "Today's appointments",
  "list.refresh": "Refresh",
  "list.empty": "No appointments today",
  "list.time": "Time",
  "list.patient": "Patient",
  "list.state": "Status",
  "appt.state.scheduled": "Scheduled",
  "appt.state.waiting": "Patient waiting",
  "appt.state.in_progress": "In progress",
  "appt.state.finished": "Finished",
  "appt.state.cancelled": "Cancelled",
  "appt.start": "Start consultation",
  "appt.resume": "Resume",
  "appt.starting": "Starting…",
  "appt.startAria": "Start consultation: {name}, {time}",
  "appt.resumeAria": "Resume consultation: {name}, {time}",
  "call.patientLink": "Link for the patient",
  "call.copy": "Copy",
  "call.copied": "Link copied",
  "call.copyFailed": "Could not copy: select the link and copy it manually",
  "call.linkHint": "Send the link to the patient over a secure channel. It is valid for a limited time.",
  "call.waitingTitle": "Waiting room",
  "call.waitingCount": "Waiting: {n}",
  "call.waitingEmpty": "Nobody is waiting yet",
  "call.admit": "Admit",
  "call.admitAria": "Admit {name}",
  "call.backToList": "Back to appointments",
  "call.endedText": "The consultation has ended for all participants.",
  "stage.doctor.lobby":
    "The patient has not joined yet. Send them the link and admit them from the waiting room.",
  "stage.doctor.connecting": "Connecting to the patient…",
  "stage.doctor.reconnecting": "The connection dropped, restoring it…",
  "stage.doctor.idle": "Connecting to the server…",

  "patient.pageTitle": "Video consultation — Telemed",
  "patient.heading": "Video consultation",
  "lobby.connecting": "Connecting to the server…",
  "lobby.wait": "Please wait, the doctor will admit you shortly",
  "lobby.notStarted":
    "The doctor has not started the consultation yet. Stay on this page — you will enter the waiting room automatically.",
  "lobby.connectingDoctor": "The doctor has admitted you. Connecting…",
  "lobby.reconnecting": "The connection dropped, restoring it…",
  "lobby.media": "Allow access to your camera and microphone when the browser asks",
  "left.title": "You have left the consultation",
  "left.text": "If you left by mistake, come back — the doctor will admit you again.",
  "left.rejoin": "Rejoin the consultation",
  "ended.title": "The consultation has ended",
  "ended.text": "Thank you! You can close this page.",
};

const DICTIONARIES = { ru, en };

let current = initialLanguage();
/** @type {Set<(lang: string) => void>} */
const listeners = new Set();

function initialLanguage() {
  try {
    const saved = localStorage.getItem(STORAGE_KEY);
    if (saved && LANGUAGES.includes(saved)) return saved;
  } catch {
    // Storage may be disabled (privacy mode); Russian is the default anyway.
  }
  return "ru";
}

/** The current language code, `ru` or `en`. */
export function getLanguage() {
  return current;
}

/** The BCP 47 locale used for dates and times in the current language. */
export function getLocale() {
  return LOCALES[current];
}

/** Whether a string exists for `key` (in the current language or the Russian fallback). */
export function has(key) {
  return key in DICTIONARIES[current] || key in ru;
}

/**
 * The string for `key` in the current language, with `{name}` placeholders filled
 * from `params`. Falls back to Russian, then to the key itself (a visible bug, not a crash).
 * @param {string} key
 * @param {Record<string, string|number>} [params]
 */
export function t(key, params) {
  const template = DICTIONARIES[current][key] ?? ru[key] ?? key;
  if (!params) return template;
  return template.replace(/\{(\w+)\}/g, (whole, name) =>
    Object.hasOwn(params, name) ? String(params[name]) : whole,
  );
}

function readArgs(el) {
  const raw = el.dataset.i18nArgs;
  if (!raw) return undefined;
  try {
    return JSON.parse(raw);
  } catch {
    return undefined;
  }
}

function writeArgs(el, params) {
  if (params) el.dataset.i18nArgs = JSON.stringify(params);
  else delete el.dataset.i18nArgs;
}

/**
 * Set an element's text to a translated string and remember the key, so a language
 * switch re-renders it.
 * @param {HTMLElement} el
 * @param {string} key
 * @param {Record<string, string|number>} [params]
 */
export function setText(el, key, params) {
  el.dataset.i18n = key;
  writeArgs(el, params);
  el.textContent = t(key, params);
}

/**
 * Set a translated attribute (aria-label, title, placeholder…) and remember its key.
 * Parameters are shared with the element's text (one `data-i18n-args` per element).
 * @param {HTMLElement} el
 * @param {string} attr
 * @param {string} key
 * @param {Record<string, string|number>} [params]
 */
export function setAttrText(el, attr, key, params) {
  const pairs = parseAttrSpec(el.dataset.i18nAttr).filter(([name]) => name !== attr);
  pairs.push([attr, key]);
  el.dataset.i18nAttr = pairs.map(([name, k]) => `${name}=${k}`).join(";");
  if (params) writeArgs(el, params);
  el.setAttribute(attr, t(key, params ?? readArgs(el)));
}

function parseAttrSpec(spec) {
  if (!spec) return [];
  return spec
    .split(";")
    .map((pair) => pair.split("=").map((part) => part.trim()))
    .filter((pair) => pair.length === 2 && pair[0] && pair[1]);
}

/** Re-render every translated text and attribute under `root`, and `<html lang>`. */
export function applyTranslations(root = document) {
  document.documentElement.lang = current;
  for (const el of root.querySelectorAll("[data-i18n]")) {
    el.textContent = t(el.dataset.i18n, readArgs(el));
  }
  for (const el of root.querySelectorAll("[data-i18n-attr]")) {
    const args = readArgs(el);
    for (const [attr, key] of parseAttrSpec(el.dataset.i18nAttr)) el.setAttribute(attr, t(key, args));
  }
}

/**
 * Switch the language, remember it and re-render the page.
 * @param {string} lang
 */
export function setLanguage(lang) {
  if (!LANGUAGES.includes(lang) || lang === current) return;
  current = lang;
  try {
    localStorage.setItem(STORAGE_KEY, lang);
  } catch {
    // Not remembered across visits; still switched for this page.
  }
  applyTranslations();
  for (const listener of listeners) listener(lang);
}

/**
 * Call `listener` after every language switch (for text that is not key-based, such as
 * formatted times). Returns a function that unsubscribes.
 * @param {(lang: string) => void} listener
 */
export function onLanguageChange(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

/** "09:30" in the current locale; an empty string for an unparsable value. */
export function formatTime(value) {
  const date = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(date.getTime())) return "";
  return new Intl.DateTimeFormat(getLocale(), { hour: "2-digit", minute: "2-digit" }).format(date);
}

/** "вторник, 14 октября" / "Tuesday 14 October" in the current locale. */
export function formatDate(value) {
  const date = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(date.getTime())) return "";
  return new Intl.DateTimeFormat(getLocale(), {
    weekday: "long",
    day: "numeric",
    month: "long",
  }).format(date);
}
