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

  "consent.title": "Запись консультации",
  "consent.questionPatient":
    "Врач предлагает записать консультацию (видео и звук). Запись прикрепляется к вашей медицинской карте. Она начнётся, только когда согласятся все участники; согласие можно отозвать в любой момент.",
  "consent.questionDoctor":
    "Записать консультацию? Ваше согласие — разрешение начать запись; она начнётся, когда согласится и пациент.",
  "consent.accept": "Согласен на запись",
  "consent.decline": "Не согласен",
  "consent.withdraw": "Отозвать согласие",
  "consent.status.undecided": "Вы ещё не ответили. Без согласия всех участников запись не ведётся.",
  "consent.status.waiting": "Вы согласились. Запись начнётся, когда согласятся все участники.",
  "consent.status.recording": "Вы согласились, идёт запись. Согласие можно отозвать в любой момент.",
  "consent.status.declined": "Вы отказались от записи. Консультация не записывается.",
  "consent.status.halted": "Запись остановлена сервером (нет места на диске). Записанное сохранено.",
  "recording.on": "Идёт запись",

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
  "code.not_recording": "Запись сейчас не ведётся",
  "code.recording_failed": "Не удалось передать запись на сервер, пробуем снова",
  "code.network": "Нет связи с сервером записи, пробуем снова",
  "code.recording_stopped": "Запись остановлена на сервере; записанное сохранено",
  "code.disk_full": "Запись остановлена: на сервере закончилось место. Записанное сохранено.",
  "code.storage_full": "Запись не началась: на сервере закончилось место",
  "code.superseded": "Консультация открыта в другой вкладке или на другом устройстве; запись идёт оттуда",
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
  "notifications.title": "Уведомления",
  "notifications.readAll": "Прочитать все",
  "notifications.empty": "Новых уведомлений нет",
  "security.open": "Второй фактор",
  "security.title": "Второй фактор входа",
  "security.intro": "Второй фактор защищает вход и нужен для подписи записей в карте.",
  "security.start": "Подключить приложение-аутентификатор",
  "security.scan": "Отсканируйте QR-код приложением-аутентификатором и введите код из него.",
  "security.qrAlt": "QR-код для приложения-аутентификатора",
  "security.manual": "Или введите ключ вручную:",
  "security.code": "Код из приложения",
  "security.confirm": "Подтвердить",
  "security.close": "К списку приёма",
  "security.enabled": "Второй фактор подключён: при входе и перед подписью понадобится код.",
  "security.invalid": "Код не подошёл: проверьте время на телефоне и введите новый код",
  "login.title": "Вход для врача",
  "login.username": "Имя пользователя",
  "login.password": "Пароль",
  "login.submit": "Войти",
  "login.busy": "Вход…",
  "login.failed": "Неверное имя пользователя или пароль",
  "login.expired": "Сеанс истёк, войдите снова",
  "login.code": "Код из приложения-аутентификатора",
  "login.codeNeeded": "Введите шестизначный код из приложения-аутентификатора",
  "login.locked": "Слишком много неудачных попыток входа: попробуйте позже",
  "stepUp.title": "Подтвердите подпись",
  "stepUp.text": "Введите код из приложения-аутентификатора. Набранный текст сохранён.",
  "stepUp.code": "Код",
  "stepUp.submit": "Подтвердить",
  "stepUp.busy": "Проверка…",
  "stepUp.invalid": "Код неверен или уже использован: дождитесь следующего",
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

  // The clinical record (clinical.js).
  "clinical.title": "Медицинская запись",
  "clinical.tab.note": "Осмотр",
  "clinical.tab.diagnoses": "Диагнозы",
  "clinical.tab.prescriptions": "Назначения",
  "clinical.tab.referrals": "Направления",
  "clinical.signInAgain": "Сеанс истёк: войдите снова. Набранный текст сохранён в браузере.",
  "clinical.code.stale-version": "Запись изменена в другой вкладке: обновите и повторите",
  "clinical.code.note-finalized": "Запись уже подписана: изменения вносятся через исправление",
  "clinical.code.note-empty": "Запись пуста: заполните хотя бы одно поле",
  "clinical.code.duplicate-diagnosis": "Этот диагноз уже в списке",
  "clinical.code.unknown-icd10-code": "Такого кода нет в МКБ-10 ВОЗ",
  "clinical.code.unspecific-icd10-code": "У этой рубрики есть подрубрики: выберите точный код",
  "clinical.code.prescription-finalized": "Назначение уже подписано: изменения вносятся через исправление",
  "clinical.code.step-up-required": "Для подписи подтвердите вход (усиленная аутентификация)",
  "common.remove": "Удалить",
  "note.complaints": "Жалобы",
  "note.anamnesis": "Анамнез",
  "note.findings": "Объективные данные",
  "note.conclusion": "Заключение",
  "note.recommendations": "Рекомендации",
  "note.finalize": "Подписать запись",
  "note.correct": "Исправить (новая редакция)",
  "note.finalizeHint": "Черновик сохраняется автоматически. Подписанную запись изменить нельзя: исправление создаёт новую редакцию, прежняя сохраняется.",
  "note.merged": "Запись менялась в другой вкладке: ваши правки объединены с ней",
  "note.localDropped": "Запись подписана в другом окне; несохранённый текст этой вкладки не внесён",
  "note.empty": "Запись пуста: заполните хотя бы одно поле",
  "note.finalized": "Запись подписана",
  "note.revisionDraft": "Редакция {n}: черновик исправления",
  "note.revisionFinal": "Редакция {n}: подписана",
  "note.status.idle": "Черновик",
  "note.status.pending": "Изменения не сохранены…",
  "note.status.saving": "Сохранение…",
  "note.status.saved": "Сохранено в {time}",
  "note.status.offline": "Нет связи — текст сохранён в браузере",
  "note.status.error": "Не сохранено — текст сохранён в браузере",
  "note.status.final": "Подписано",
  "confirm.sign": "Подписать",
  "confirm.cancel": "Отмена",
  "confirm.noteTitle": "Подписать запись?",
  "confirm.noteText": "Запись, диагнозы ({diagnoses}) и направления ({referrals}) станут окончательными. Исправить их можно будет только новой редакцией.",
  "confirm.rxTitle": "Подписать назначение?",
  "confirm.rxText": "Рецепт на «{inn}» станет окончательным и будет передан в медицинскую карту.",
  "dx.comment": "Формулировка диагноза (необязательно)",
  "dx.search": "Код МКБ-10",
  "dx.placeholder": "J06.9 или acute bronchitis",
  "dx.options": "Найденные коды МКБ-10",
  "dx.hint": "Введите код (J06.9) или слова на английском: справочник ВОЗ МКБ-10 англоязычный, русские названия в нём не ищутся.",
  "dx.englishOnly": "Русские слова не найдутся: введите код или название по-английски.",
  "dx.empty": "Диагнозы не указаны",
  "dx.primary": "основной",
  "dx.makePrimary": "Сделать основным",
  "rx.empty": "Назначений нет",
  "rx.new": "Новое назначение",
  "rx.editTitle": "Изменение: {inn}",
  "rx.inn": "МНН препарата",
  "rx.form": "Форма",
  "rx.formText": "Какая форма",
  "rx.dose": "Разовая доза",
  "rx.doseUnit": "Единица",
  "rx.route": "Путь введения",
  "rx.routeText": "Какой путь",
  "rx.times": "Раз в день",
  "rx.frequency": "или кратность словами",
  "rx.duration": "Курс, дней",
  "rx.valid": "Рецепт действует, дней",
  "rx.quantity": "Количество",
  "rx.quantityUnit": "Единица отпуска",
  "rx.instructions": "Указания (необязательно)",
  "rx.add": "Добавить назначение",
  "rx.save": "Сохранить изменения",
  "rx.cancelEdit": "Отменить изменение",
  "rx.required": "Укажите МНН и дозу",
  "rx.finalize": "Подписать",
  "rx.finalized": "Назначение подписано",
  "rx.edit": "Изменить",
  "rx.correct": "Исправить",
  "rx.statusDraft": "черновик, ред. {n}",
  "rx.statusFinal": "подписан, ред. {n}",
  "rx.timesPerDay": "{n} р/день",
  "rx.days": "{n} дн.",
  "rx.validDays": "рецепт на {n} дн.",
  "rx.validUntil": "действует до {date}",
  "rx.form.tablet": "таблетки",
  "rx.form.film_coated_tablet": "таблетки, покрытые оболочкой",
  "rx.form.capsule": "капсулы",
  "rx.form.oral_solution": "раствор для приёма внутрь",
  "rx.form.suspension": "суспензия",
  "rx.form.syrup": "сироп",
  "rx.form.powder": "порошок",
  "rx.form.drops": "капли",
  "rx.form.nasal_spray": "спрей назальный",
  "rx.form.inhaler": "аэрозоль для ингаляций",
  "rx.form.injection": "раствор для инъекций",
  "rx.form.infusion": "раствор для инфузий",
  "rx.form.ointment": "мазь",
  "rx.form.cream": "крем",
  "rx.form.gel": "гель",
  "rx.form.suppository": "суппозитории",
  "rx.form.patch": "трансдермальный пластырь",
  "rx.form.other": "другая форма",
  "rx.unit.mg": "мг",
  "rx.unit.g": "г",
  "rx.unit.mcg": "мкг",
  "rx.unit.ml": "мл",
  "rx.unit.IU": "МЕ",
  "rx.unit.drop": "капли",
  "rx.unit.tablet": "табл.",
  "rx.unit.capsule": "капс.",
  "rx.unit.puff": "доз (вдохов)",
  "rx.unit.sachet": "пакетик",
  "rx.unit.application": "нанесение",
  "rx.route.oral": "внутрь",
  "rx.route.sublingual": "под язык",
  "rx.route.rectal": "ректально",
  "rx.route.vaginal": "вагинально",
  "rx.route.topical": "наружно",
  "rx.route.transdermal": "трансдермально",
  "rx.route.inhalation": "ингаляционно",
  "rx.route.nasal": "интраназально",
  "rx.route.ophthalmic": "в глаза",
  "rx.route.otic": "в уши",
  "rx.route.intravenous": "внутривенно",
  "rx.route.intramuscular": "внутримышечно",
  "rx.route.subcutaneous": "подкожно",
  "rx.route.other": "другой путь",
  "rx.qunit.package": "уп.",
  "rx.qunit.tablet": "табл.",
  "rx.qunit.capsule": "капс.",
  "rx.qunit.bottle": "фл.",
  "rx.qunit.ampoule": "амп.",
  "rx.qunit.vial": "флак.",
  "rx.qunit.tube": "туб.",
  "ref.empty": "Направлений нет",
  "ref.new": "Новое направление",
  "ref.kind": "Вид",
  "ref.urgency": "Срочность",
  "ref.target": "Куда (специалист, исследование)",
  "ref.reason": "Обоснование",
  "ref.add": "Добавить направление",
  "ref.required": "Укажите, куда и зачем направляете",
  "ref.kind.consultation": "консультация специалиста",
  "ref.kind.laboratory": "лабораторное исследование",
  "ref.kind.imaging": "инструментальное исследование",
  "ref.kind.hospitalization": "госпитализация",
  "ref.kind.other": "другое",
  "ref.urgency.routine": "планово",
  "ref.urgency.urgent": "срочно",
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

  "consent.title": "Recording the consultation",
  "consent.questionPatient":
    "The doctor proposes to record this consultation (video and sound). The recording is attached to your medical record. It starts only once everyone has agreed, and you may withdraw at any time.",
  "consent.questionDoctor":
    "Record this consultation? Your consent is the go-ahead; recording starts once the patient agrees too.",
  "consent.accept": "I agree to recording",
  "consent.decline": "I do not agree",
  "consent.withdraw": "Withdraw consent",
  "consent.status.undecided": "You have not answered yet. Nothing is recorded without everyone's consent.",
  "consent.status.waiting": "You agreed. Recording starts once everyone has agreed.",
  "consent.status.recording": "You agreed; the consultation is being recorded. You may withdraw at any time.",
  "consent.status.declined": "You declined. The consultation is not recorded.",
  "consent.status.halted": "The server stopped recording (out of disk space). What was recorded is kept.",
  "recording.on": "Recording",

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
  "code.not_recording": "The consultation is not being recorded now",
  "code.recording_failed": "Could not send the recording to the server, trying again",
  "code.network": "The recording server cannot be reached, trying again",
  "code.recording_stopped": "The server stopped recording; what was recorded is kept",
  "code.disk_full": "Recording stopped: the server ran out of disk space. What was recorded is kept.",
  "code.storage_full": "Recording could not start: the server is out of disk space",
  "code.superseded": "The consultation is open in another tab or device; it is recorded from there",
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
  "notifications.title": "Notifications",
  "notifications.readAll": "Mark all read",
  "notifications.empty": "No new notifications",
  "security.open": "Second factor",
  "security.title": "Second sign-in factor",
  "security.intro": "A second factor protects your sign-in and is needed to sign card records.",
  "security.start": "Set up an authenticator app",
  "security.scan": "Scan the QR code with your authenticator app and enter the code it shows.",
  "security.qrAlt": "QR code for the authenticator app",
  "security.manual": "Or enter the key by hand:",
  "security.code": "Code from the app",
  "security.confirm": "Confirm",
  "security.close": "Back to appointments",
  "security.enabled": "The second factor is on: sign-in and signing will ask for a code.",
  "security.invalid": "The code did not match: check your phone's clock and enter a new code",
  "login.title": "Doctor sign-in",
  "login.username": "Username",
  "login.password": "Password",
  "login.submit": "Sign in",
  "login.busy": "Signing in…",
  "login.failed": "Wrong username or password",
  "login.expired": "Your session has expired, please sign in again",
  "login.code": "Code from your authenticator app",
  "login.codeNeeded": "Enter the six-digit code from your authenticator app",
  "login.locked": "Too many failed sign-ins: try again later",
  "stepUp.title": "Confirm your signature",
  "stepUp.text": "Enter the code from your authenticator app. What you typed is kept.",
  "stepUp.code": "Code",
  "stepUp.submit": "Confirm",
  "stepUp.busy": "Checking…",
  "stepUp.invalid": "The code is wrong or was used already: wait for the next one",
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

  // The clinical record (clinical.js).
  "clinical.title": "Medical record",
  "clinical.tab.note": "Examination",
  "clinical.tab.diagnoses": "Diagnoses",
  "clinical.tab.prescriptions": "Prescriptions",
  "clinical.tab.referrals": "Referrals",
  "clinical.signInAgain": "Your session has expired: sign in again. What you typed is kept in this browser.",
  "clinical.code.stale-version": "The record was changed in another tab: reload and try again",
  "clinical.code.note-finalized": "The record is already signed: changes go through a correction",
  "clinical.code.note-empty": "The record is empty: fill in at least one field",
  "clinical.code.duplicate-diagnosis": "This diagnosis is already on the list",
  "clinical.code.unknown-icd10-code": "No such code in the WHO ICD-10",
  "clinical.code.unspecific-icd10-code": "This category has subdivisions: choose the exact code",
  "clinical.code.prescription-finalized": "The prescription is already signed: changes go through a correction",
  "clinical.code.step-up-required": "Confirm your sign-in (strong authentication) to sign",
  "common.remove": "Remove",
  "note.complaints": "Complaints",
  "note.anamnesis": "History",
  "note.findings": "Examination findings",
  "note.conclusion": "Conclusion",
  "note.recommendations": "Recommendations",
  "note.finalize": "Sign the record",
  "note.correct": "Correct (new revision)",
  "note.finalizeHint": "The draft saves itself. A signed record cannot change: a correction makes a new revision and the earlier one is kept.",
  "note.merged": "The record changed in another tab: your edits were merged into it",
  "note.localDropped": "The record was signed in another window; this tab's unsaved text was not added",
  "note.empty": "The record is empty: fill in at least one field",
  "note.finalized": "Record signed",
  "note.revisionDraft": "Revision {n}: draft correction",
  "note.revisionFinal": "Revision {n}: signed",
  "note.status.idle": "Draft",
  "note.status.pending": "Unsaved changes…",
  "note.status.saving": "Saving…",
  "note.status.saved": "Saved at {time}",
  "note.status.offline": "Offline — kept in this browser",
  "note.status.error": "Not saved — kept in this browser",
  "note.status.final": "Signed",
  "confirm.sign": "Sign",
  "confirm.cancel": "Cancel",
  "confirm.noteTitle": "Sign the record?",
  "confirm.noteText": "The record, its diagnoses ({diagnoses}) and referrals ({referrals}) become final. Only a new revision can correct them.",
  "confirm.rxTitle": "Sign the prescription?",
  "confirm.rxText": "The prescription for “{inn}” becomes final and goes to the medical record.",
  "dx.comment": "Diagnosis wording (optional)",
  "dx.search": "ICD-10 code",
  "dx.placeholder": "J06.9 or acute bronchitis",
  "dx.options": "ICD-10 codes found",
  "dx.hint": "Type a code (J06.9) or English words: the WHO ICD-10 list is in English, Russian titles are not searched.",
  "dx.englishOnly": "Russian words will not match: type a code or the English title.",
  "dx.empty": "No diagnoses yet",
  "dx.primary": "primary",
  "dx.makePrimary": "Make primary",
  "rx.empty": "No prescriptions yet",
  "rx.new": "New prescription",
  "rx.editTitle": "Editing: {inn}",
  "rx.inn": "International non-proprietary name",
  "rx.form": "Form",
  "rx.formText": "Which form",
  "rx.dose": "Single dose",
  "rx.doseUnit": "Unit",
  "rx.route": "Route",
  "rx.routeText": "Which route",
  "rx.times": "Times a day",
  "rx.frequency": "or frequency in words",
  "rx.duration": "Course, days",
  "rx.valid": "Valid for, days",
  "rx.quantity": "Quantity",
  "rx.quantityUnit": "Dispensing unit",
  "rx.instructions": "Instructions (optional)",
  "rx.add": "Add prescription",
  "rx.save": "Save changes",
  "rx.cancelEdit": "Cancel editing",
  "rx.required": "Give the name and the dose",
  "rx.finalize": "Sign",
  "rx.finalized": "Prescription signed",
  "rx.edit": "Edit",
  "rx.correct": "Correct",
  "rx.statusDraft": "draft, rev. {n}",
  "rx.statusFinal": "signed, rev. {n}",
  "rx.timesPerDay": "{n}× a day",
  "rx.days": "{n} days",
  "rx.validDays": "valid {n} days",
  "rx.validUntil": "valid until {date}",
  "rx.form.tablet": "tablets",
  "rx.form.film_coated_tablet": "film-coated tablets",
  "rx.form.capsule": "capsules",
  "rx.form.oral_solution": "oral solution",
  "rx.form.suspension": "suspension",
  "rx.form.syrup": "syrup",
  "rx.form.powder": "powder",
  "rx.form.drops": "drops",
  "rx.form.nasal_spray": "nasal spray",
  "rx.form.inhaler": "inhalation aerosol",
  "rx.form.injection": "solution for injection",
  "rx.form.infusion": "solution for infusion",
  "rx.form.ointment": "ointment",
  "rx.form.cream": "cream",
  "rx.form.gel": "gel",
  "rx.form.suppository": "suppositories",
  "rx.form.patch": "transdermal patch",
  "rx.form.other": "other form",
  "rx.unit.mg": "mg",
  "rx.unit.g": "g",
  "rx.unit.mcg": "mcg",
  "rx.unit.ml": "ml",
  "rx.unit.IU": "IU",
  "rx.unit.drop": "drops",
  "rx.unit.tablet": "tab.",
  "rx.unit.capsule": "caps.",
  "rx.unit.puff": "puffs",
  "rx.unit.sachet": "sachets",
  "rx.unit.application": "applications",
  "rx.route.oral": "by mouth",
  "rx.route.sublingual": "sublingual",
  "rx.route.rectal": "rectal",
  "rx.route.vaginal": "vaginal",
  "rx.route.topical": "topical",
  "rx.route.transdermal": "transdermal",
  "rx.route.inhalation": "inhaled",
  "rx.route.nasal": "nasal",
  "rx.route.ophthalmic": "eye",
  "rx.route.otic": "ear",
  "rx.route.intravenous": "intravenous",
  "rx.route.intramuscular": "intramuscular",
  "rx.route.subcutaneous": "subcutaneous",
  "rx.route.other": "other route",
  "rx.qunit.package": "pack(s)",
  "rx.qunit.tablet": "tab.",
  "rx.qunit.capsule": "caps.",
  "rx.qunit.bottle": "bottle(s)",
  "rx.qunit.ampoule": "amp.",
  "rx.qunit.vial": "vial(s)",
  "rx.qunit.tube": "tube(s)",
  "ref.empty": "No referrals yet",
  "ref.new": "New referral",
  "ref.kind": "Kind",
  "ref.urgency": "Urgency",
  "ref.target": "To (specialist, test)",
  "ref.reason": "Reason",
  "ref.add": "Add referral",
  "ref.required": "Say where to and why",
  "ref.kind.consultation": "specialist consultation",
  "ref.kind.laboratory": "laboratory test",
  "ref.kind.imaging": "imaging or functional test",
  "ref.kind.hospitalization": "hospital admission",
  "ref.kind.other": "other",
  "ref.urgency.routine": "routine",
  "ref.urgency.urgent": "urgent",
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
