/**
 * The doctor's clinical input beside the call: the note (complaints, anamnesis,
 * findings, conclusion, recommendations), ICD-10 diagnoses with search-as-you-type,
 * e-prescriptions and referrals.
 *
 * Nothing typed is lost: every keystroke goes to a local copy in localStorage at once
 * and to the server ~800 ms later (PUT …/note with the version it was based on). After
 * a reload or a dropped connection the local copy is reconciled with the server's
 * draft field by field: a field this page changed since its last save wins, any other
 * field takes the server's text. `note-save-status` says saved / saving / offline —
 * kept locally.
 */

import { ApiError, apiRequest, clearProblem, showProblem } from "./api.js";
import { formatTime, getLocale, has, onLanguageChange, setText, t } from "./i18n.js";
import { byId, show, storageGet, storageSet, toast } from "./ui.js";
import { withStepUp } from "./stepup.js";

const PARTS = ["complaints", "anamnesis", "findings", "conclusion", "recommendations"];
const SAVE_DELAY_MS = 800;
const RETRY_MS = 5000;
const SEARCH_DELAY_MS = 150;
const LOCAL_PREFIX = "telemed.clinical.note.";
const RX_FORM_PREFIX = "telemed.clinical.rxform.";

const FORMS = [
  "tablet", "film_coated_tablet", "capsule", "oral_solution", "suspension", "syrup", "powder",
  "drops", "nasal_spray", "inhaler", "injection", "infusion", "ointment", "cream", "gel",
  "suppository", "patch", "other",
];
const DOSE_UNITS = ["mg", "g", "mcg", "ml", "IU", "drop", "tablet", "capsule", "puff", "sachet", "application"];
const ROUTES = [
  "oral", "sublingual", "rectal", "vaginal", "topical", "transdermal", "inhalation", "nasal",
  "ophthalmic", "otic", "intravenous", "intramuscular", "subcutaneous", "other",
];
const QUANTITY_UNITS = ["package", "tablet", "capsule", "bottle", "ampoule", "vial", "tube"];
const REFERRAL_KINDS = ["consultation", "laboratory", "imaging", "hospitalization", "other"];
const URGENCIES = ["routine", "urgent"];

/** @param {unknown} error */
function problemCode(error) {
  return error instanceof ApiError ? String(error.type).split(":").pop() : "";
}

function fillSelect(select, values, prefix) {
  select.replaceChildren(
    ...values.map((value) => {
      const option = document.createElement("option");
      option.value = value;
      setText(option, `${prefix}.${value}`);
      return option;
    }),
  );
}

function button(key, testid, className = "btn btn-secondary btn-small") {
  const el = document.createElement("button");
  el.type = "button";
  el.className = className;
  el.dataset.testid = testid;
  setText(el, key);
  return el;
}

/** The clinical panel of the doctor's console; one per page, reused for each consultation. */
class ClinicalPanel {
  /** @type {string|null} */
  cid = null;
  /** @type {string|null} */
  token = null;
  /** The server's current note revision as last seen. */
  note = { id: null, revision: 1, version: 0, status: "draft" };
  /** The text the server holds (as far as this page knows): the base of a 3-way merge. */
  base = emptyText();
  dirty = false;
  saving = false;
  again = false;
  saveTimer = 0;
  retryTimer = 0;
  /** @type {Promise<void>} the save loop running now */
  inflight = Promise.resolve();
  /** @type {Array<Record<string, any>>} */
  diagnoses = [];
  /** @type {Array<Record<string, any>>} */
  prescriptions = [];
  /** @type {Array<Record<string, any>>} */
  referrals = [];
  /** @type {{id: string, version: number}|null} the prescription the form edits */
  editing = null;
  searchSeq = 0;
  searchTimer = 0;
  /** @type {Array<{code: string, display: string}>} */
  options = [];
  active = -1;
  /** @type {Date|null} */
  lastSaved = null;
  /** @type {unknown} the last failed save, until one succeeds */
  failure = null;

  constructor() {
    this.el = {
      panel: byId("clinical-panel"),
      status: byId("note-save-status"),
      error: byId("clinical-error"),
      revision: byId("note-revision"),
      finalize: /** @type {HTMLButtonElement} */ (byId("note-finalize")),
      correct: /** @type {HTMLButtonElement} */ (byId("note-correct")),
      dxComment: /** @type {HTMLInputElement} */ (byId("diagnosis-comment")),
      dxSearch: /** @type {HTMLInputElement} */ (byId("diagnosis-search")),
      dxOptions: byId("diagnosis-options"),
      dxEnglish: byId("diagnosis-english-only"),
      dxEmpty: byId("diagnosis-empty"),
      dxList: byId("diagnosis-list"),
      rxEmpty: byId("prescription-empty"),
      rxList: byId("prescription-list"),
      rxForm: /** @type {HTMLFormElement} */ (byId("prescription-form")),
      rxTitle: byId("prescription-form-title"),
      rxError: byId("prescription-error"),
      rxSubmit: /** @type {HTMLButtonElement} */ (byId("prescription-add")),
      rxCancel: byId("prescription-cancel-edit"),
      refEmpty: byId("referral-empty"),
      refList: byId("referral-list"),
      refForm: /** @type {HTMLFormElement} */ (byId("referral-form")),
      refError: byId("referral-error"),
      refSubmit: /** @type {HTMLButtonElement} */ (byId("referral-add")),
      dialog: /** @type {HTMLDialogElement} */ (byId("clinical-confirm")),
      dialogTitle: byId("clinical-confirm-title"),
      dialogText: byId("clinical-confirm-text"),
      dialogOk: byId("clinical-confirm-ok"),
      dialogCancel: byId("clinical-confirm-cancel"),
    };
    /** @type {Record<string, HTMLTextAreaElement>} */
    this.fields = Object.fromEntries(
      PARTS.map((part) => [part, /** @type {HTMLTextAreaElement} */ (byId(`note-${part}`))]),
    );
    this.tabs = [...this.el.panel.querySelectorAll('[role="tab"]')];

    fillSelect(byId("prescription-form-kind"), FORMS, "rx.form");
    fillSelect(byId("prescription-dose-unit"), DOSE_UNITS, "rx.unit");
    fillSelect(byId("prescription-route"), ROUTES, "rx.route");
    fillSelect(byId("prescription-quantity-unit"), QUANTITY_UNITS, "rx.qunit");
    fillSelect(byId("referral-kind"), REFERRAL_KINDS, "ref.kind");
    fillSelect(byId("referral-urgency"), URGENCIES, "ref.urgency");

    for (const field of Object.values(this.fields)) {
      field.addEventListener("input", () => this.#typed());
    }
    for (const tab of this.tabs) {
      tab.addEventListener("click", () => this.#selectTab(tab));
      tab.addEventListener("keydown", (event) => this.#tabKey(event, tab));
    }
    this.el.finalize.addEventListener("click", () => this.#finalizeNote());
    this.el.correct.addEventListener("click", () => this.#correctNote());
    this.el.dxSearch.addEventListener("input", () => this.#searchSoon());
    this.el.dxSearch.addEventListener("keydown", (event) => this.#searchKey(event));
    this.el.dxSearch.addEventListener("blur", () => setTimeout(() => this.#closeOptions(), 150));
    this.el.rxForm.addEventListener("submit", (event) => {
      event.preventDefault();
      this.#submitPrescription();
    });
    this.el.rxForm.addEventListener("input", () => this.#rxFormChanged());
    this.el.rxForm.addEventListener("change", () => this.#rxFormChanged());
    this.el.rxCancel.addEventListener("click", () => this.#resetPrescriptionForm());
    this.el.refForm.addEventListener("submit", (event) => {
      event.preventDefault();
      this.#submitReferral();
    });
    window.addEventListener("online", () => this.#saveNow());
    window.addEventListener("offline", () => this.#renderStatus());
    window.addEventListener("pagehide", () => this.#flushOnExit());
    onLanguageChange(() => this.#renderPrescriptions());
    this.#renderStatus();
  }

  /**
   * Show the panel for a consultation and load what the server holds, reconciled with
   * this browser's local copy.
   * @param {string} consultationId
   * @param {string|null} token  the doctor's access token
   */
  async open(consultationId, token) {
    if (this.cid !== consultationId) this.#reset();
    this.cid = consultationId;
    this.token = token;
    show(this.el.panel, true);
    this.#restorePrescriptionForm();
    // Show the local copy at once: the server may be slow or unreachable.
    const local = this.#readLocal();
    if (local) this.#setFields(local.fields);
    await this.#load();
  }

  #reset() {
    clearTimeout(this.saveTimer);
    clearTimeout(this.retryTimer);
    this.note = { id: null, revision: 1, version: 0, status: "draft" };
    this.base = emptyText();
    this.dirty = false;
    this.diagnoses = [];
    this.prescriptions = [];
    this.referrals = [];
    this.lastSaved = null;
    this.failure = null;
    this.#setFields(emptyText());
    this.#resetPrescriptionForm(false);
    this.#renderAll();
  }

  async #api(path, options = {}) {
    return apiRequest(`/consultations/${encodeURIComponent(this.cid ?? "")}${path}`, {
      ...options,
      token: this.token,
    });
  }

  // Loading and reconciling --------------------------------------------------------

  async #load() {
    const cid = this.cid;
    let work;
    try {
      work = await this.#api("/clinical");
    } catch (error) {
      this.#failed(error, this.el.error);
      return;
    }
    if (cid !== this.cid) return;
    clearProblem(this.el.error);
    this.diagnoses = work.diagnoses ?? [];
    this.prescriptions = work.prescriptions ?? [];
    this.referrals = work.referrals ?? [];
    this.#adoptServerNote(work.note, true);
    this.#renderAll();
  }

  /**
   * Take the server's note. With `reconcile`, merge this page's unsaved edits (the
   * local copy) into it and save the result.
   */
  #adoptServerNote(server, reconcile) {
    this.note = {
      id: server.id,
      revision: server.revision,
      version: server.version,
      status: server.status,
    };
    const serverText = pickText(server);
    this.lastSaved = server.updated_at ? new Date(server.updated_at) : null;
    const local = reconcile ? this.#readLocal() : null;
    if (local?.dirty && server.status === "draft" && local.revision === server.revision) {
      const merged = mergeText(local.base, local.fields, serverText);
      this.base = serverText;
      this.#setFields(merged);
      this.dirty = PARTS.some((part) => merged[part] !== serverText[part]);
      if (this.dirty) {
        if (local.version !== server.version) toast("note.merged");
        this.#writeLocal();
        this.#saveNow();
      } else {
        this.#clearLocal();
      }
    } else {
      if (local?.dirty && server.status !== "draft") toast("note.localDropped", undefined, "error");
      this.base = serverText;
      this.#setFields(serverText);
      this.dirty = false;
      this.#clearLocal();
    }
    this.#renderNote();
  }

  // The local copy -----------------------------------------------------------------

  #localKey() {
    return LOCAL_PREFIX + this.cid;
  }

  #readLocal() {
    if (!this.cid) return null;
    try {
      const copy = JSON.parse(storageGet(localStorage, this.#localKey()) ?? "null");
      if (!copy || typeof copy !== "object" || !copy.fields) return null;
      return {
        revision: Number(copy.revision) || 1,
        version: Number(copy.version) || 0,
        dirty: Boolean(copy.dirty),
        fields: pickText(copy.fields),
        base: pickText(copy.base ?? {}),
      };
    } catch {
      return null;
    }
  }

  #writeLocal() {
    if (!this.cid) return;
    const copy = {
      revision: this.note.revision,
      version: this.note.version,
      dirty: this.dirty,
      fields: this.#fieldText(),
      base: this.base,
      at: new Date().toISOString(),
    };
    storageSet(localStorage, this.#localKey(), JSON.stringify(copy));
  }

  #clearLocal() {
    if (this.cid) storageSet(localStorage, this.#localKey(), null);
  }

  // Autosave -----------------------------------------------------------------------

  #typed() {
    if (this.note.status !== "draft") return;
    this.dirty = true;
    this.#writeLocal();
    clearTimeout(this.saveTimer);
    this.saveTimer = setTimeout(() => this.#saveNow(), SAVE_DELAY_MS);
    this.#renderStatus();
  }

  /**
   * Save the draft now, or right after the save in flight. Resolves when no save is
   * running any more (check `dirty` to know whether everything reached the server).
   * @returns {Promise<void>}
   */
  #saveNow() {
    clearTimeout(this.saveTimer);
    clearTimeout(this.retryTimer);
    if (this.saving) {
      this.again = true;
      return this.inflight;
    }
    if (!this.cid || !this.dirty || this.note.status !== "draft") return Promise.resolve();
    this.saving = true;
    this.#renderStatus();
    this.inflight = this.#saveLoop().finally(() => {
      this.saving = false;
      this.#renderStatus();
    });
    return this.inflight;
  }

  async #saveLoop() {
    do {
      this.again = false;
      await this.#saveOnce();
    } while (this.again && this.dirty && this.note.status === "draft");
  }

  async #saveOnce() {
    const cid = this.cid;
    const sent = this.#fieldText();
    try {
      const saved = await this.#api("/note", {
        method: "PUT",
        body: { ...sent, version: this.note.version, revision: this.note.revision },
      });
      if (cid !== this.cid) return;
      this.note.version = saved.version;
      this.note.id = saved.id;
      this.base = pickText(saved);
      this.lastSaved = new Date();
      const current = this.#fieldText();
      this.dirty = PARTS.some((part) => current[part] !== sent[part]);
      if (this.dirty) this.again = true;
      this.#writeLocal();
      if (!this.dirty) this.#clearLocal();
      this.failure = null;
    } catch (error) {
      if (cid !== this.cid) return;
      await this.#saveFailed(error);
    }
  }

  async #saveFailed(error) {
    const code = problemCode(error);
    if (code === "stale-version") {
      // Another tab saved meanwhile: merge our edits into its text and save again.
      try {
        const server = await this.#api("/note");
        this.#writeLocal();
        this.#adoptServerNote(server, true);
      } catch (reloadError) {
        this.failure = reloadError;
        this.#retryLater();
      }
      return;
    }
    if (code === "note-finalized") {
      this.failure = error;
      await this.#load();
      return;
    }
    this.failure = error;
    // Offline, a server error, an expired sign-in: the text stays in the local copy.
    if (!(error instanceof ApiError) || error.status === 0 || error.status >= 500) this.#retryLater();
  }

  #retryLater() {
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.#saveNow(), RETRY_MS);
  }

  /** On leaving the page: one last save that outlives it (the local copy stays anyway). */
  #flushOnExit() {
    if (!this.dirty || !this.cid || this.note.status !== "draft") return;
    try {
      fetch(`/api/v1/consultations/${encodeURIComponent(this.cid)}/note`, {
        method: "PUT",
        keepalive: true,
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${this.token}` },
        body: JSON.stringify({ ...this.#fieldText(), version: this.note.version, revision: this.note.revision }),
      }).catch(() => {});
    } catch {
      // The local copy is reconciled on the next load.
    }
  }

  // Finalizing ---------------------------------------------------------------------

  async #finalizeNote() {
    if (this.note.status !== "draft") return;
    const text = this.#fieldText();
    if (PARTS.every((part) => !text[part].trim())) {
      toast("note.empty", undefined, "error");
      return;
    }
    const ok = await this.#confirm("confirm.noteTitle", "confirm.noteText", {
      diagnoses: this.diagnoses.length,
      referrals: this.referrals.length,
    });
    if (!ok) return;
    this.el.finalize.disabled = true;
    try {
      await this.#saveNow();
      if (this.dirty) throw this.failure ?? new ApiError({ status: 0 });
      const final = await this.#signed(() =>
        this.#api("/note/finalize", {
          method: "POST",
          body: { version: this.note.version, revision: this.note.revision },
        }),
      );
      this.#adoptServerNote(final, false);
      toast("note.finalized");
    } catch (error) {
      this.#failed(error, this.el.error);
    } finally {
      this.el.finalize.disabled = false;
      this.#renderAll();
    }
  }

  /**
   * Run a finalization; when the server wants a fresh second factor, ask for a code and
   * run it again with the new token (the draft is untouched meanwhile).
   */
  async #signed(call) {
    const { result, token } = await withStepUp(this.token, (fresh) => {
      this.token = fresh;
      return call();
    });
    this.token = token;
    return result;
  }

  async #correctNote() {
    try {
      const draft = await this.#api("/note/corrections", { method: "POST" });
      this.#adoptServerNote(draft, false);
      await this.#load();
      this.fields.complaints.focus();
    } catch (error) {
      this.#failed(error, this.el.error);
    }
  }

  /**
   * Ask in the panel's dialog; resolves true when confirmed.
   * @returns {Promise<boolean>}
   */
  #confirm(titleKey, textKey, params) {
    const { dialog } = this.el;
    setText(this.el.dialogTitle, titleKey);
    setText(this.el.dialogText, textKey, params);
    return new Promise((resolve) => {
      const finish = (answer) => {
        this.el.dialogOk.removeEventListener("click", onOk);
        this.el.dialogCancel.removeEventListener("click", onCancel);
        dialog.removeEventListener("cancel", onCancel);
        if (dialog.open) dialog.close();
        resolve(answer);
      };
      const onOk = () => finish(true);
      const onCancel = () => finish(false);
      this.el.dialogOk.addEventListener("click", onOk);
      this.el.dialogCancel.addEventListener("click", onCancel);
      dialog.addEventListener("cancel", onCancel);
      dialog.showModal();
      this.el.dialogCancel.focus();
    });
  }

  // Diagnoses ----------------------------------------------------------------------

  #searchSoon() {
    clearTimeout(this.searchTimer);
    this.searchTimer = setTimeout(() => this.#search(), SEARCH_DELAY_MS);
  }

  async #search() {
    const query = this.el.dxSearch.value.trim();
    const seq = ++this.searchSeq;
    if (!query) {
      this.#closeOptions();
      show(this.el.dxEnglish, false);
      return;
    }
    let found;
    try {
      found = await apiRequest(`/icd10?q=${encodeURIComponent(query)}`, { token: this.token });
    } catch (error) {
      if (seq === this.searchSeq) this.#failed(error, this.el.error);
      return;
    }
    if (seq !== this.searchSeq) return; // a newer query is on its way
    show(this.el.dxEnglish, Boolean(found.english_only));
    this.options = Array.isArray(found.results) ? found.results : [];
    this.active = this.options.length ? 0 : -1;
    this.#renderOptions();
  }

  #renderOptions() {
    const list = this.el.dxOptions;
    list.replaceChildren(
      ...this.options.map((option, index) => {
        const item = document.createElement("li");
        item.id = `diagnosis-option-${index}`;
        item.className = "combobox-option";
        item.setAttribute("role", "option");
        item.setAttribute("aria-selected", String(index === this.active));
        item.dataset.testid = "diagnosis-option";
        item.dataset.code = option.code;
        const code = document.createElement("span");
        code.className = "icd-code";
        code.textContent = option.code;
        const title = document.createElement("span");
        title.className = "icd-title";
        title.textContent = option.display;
        item.append(code, title);
        // mousedown, not click: the input's blur would close the list first.
        item.addEventListener("mousedown", (event) => {
          event.preventDefault();
          this.#pick(option);
        });
        return item;
      }),
    );
    const open = this.options.length > 0;
    show(list, open);
    this.el.dxSearch.setAttribute("aria-expanded", String(open));
    if (this.active >= 0) {
      this.el.dxSearch.setAttribute("aria-activedescendant", `diagnosis-option-${this.active}`);
      list.children[this.active]?.scrollIntoView({ block: "nearest" });
    } else {
      this.el.dxSearch.removeAttribute("aria-activedescendant");
    }
  }

  #closeOptions() {
    this.options = [];
    this.active = -1;
    this.#renderOptions();
  }

  /** @param {KeyboardEvent} event */
  #searchKey(event) {
    const count = this.options.length;
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      if (!count) {
        this.#search();
        return;
      }
      event.preventDefault();
      const step = event.key === "ArrowDown" ? 1 : -1;
      this.active = (this.active + step + count) % count;
      this.#renderOptions();
    } else if (event.key === "Enter") {
      event.preventDefault();
      if (this.active >= 0 && this.options[this.active]) this.#pick(this.options[this.active]);
    } else if (event.key === "Escape") {
      if (count) event.preventDefault();
      this.#closeOptions();
    }
  }

  async #pick(option) {
    this.#closeOptions();
    const comment = this.el.dxComment.value.trim();
    try {
      const body = await this.#api("/diagnoses", {
        method: "POST",
        body: comment ? { code: option.code, comment } : { code: option.code },
      });
      this.diagnoses = body.diagnoses ?? [];
      this.el.dxSearch.value = "";
      this.el.dxComment.value = "";
      show(this.el.dxEnglish, false);
      clearProblem(this.el.error);
    } catch (error) {
      this.#failed(error, this.el.error);
    }
    this.#renderDiagnoses();
    this.el.dxSearch.focus();
  }

  async #diagnosisAction(method, id, body) {
    try {
      const answer = await this.#api(`/diagnoses/${encodeURIComponent(id)}`, { method, body });
      this.diagnoses = answer.diagnoses ?? [];
    } catch (error) {
      this.#failed(error, this.el.error);
    }
    this.#renderDiagnoses();
  }

  // Prescriptions ------------------------------------------------------------------

  #prescriptionBody() {
    const data = new FormData(this.el.rxForm);
    const text = (name) => String(data.get(name) ?? "").trim();
    const number = (name) => (text(name) === "" ? null : Number(text(name)));
    const body = {
      inn: text("inn"),
      form: text("form"),
      dose_value: text("dose_value").replace(",", "."),
      dose_unit: text("dose_unit"),
      route: text("route"),
      times_per_day: number("times_per_day"),
      duration_days: number("duration_days"),
      quantity: number("quantity"),
      quantity_unit: text("quantity_unit"),
      valid_days: number("valid_days"),
    };
    for (const name of ["form_text", "route_text", "frequency_text", "instructions"]) {
      if (text(name)) body[name] = text(name);
    }
    return body;
  }

  async #submitPrescription() {
    clearProblem(this.el.rxError);
    const body = this.#prescriptionBody();
    if (!body.inn || !body.dose_value) {
      (body.inn ? byId("prescription-dose") : byId("prescription-inn")).focus();
      setText(this.el.rxError, "rx.required");
      show(this.el.rxError, true);
      return;
    }
    this.el.rxSubmit.disabled = true;
    try {
      if (this.editing) {
        const saved = await this.#api(`/prescriptions/${encodeURIComponent(this.editing.id)}`, {
          method: "PUT",
          body: { ...body, version: this.editing.version },
        });
        this.prescriptions = this.prescriptions.map((p) => (p.series_id === saved.series_id ? saved : p));
      } else {
        const created = await this.#api("/prescriptions", { method: "POST", body });
        this.prescriptions = [...this.prescriptions, created];
      }
      this.#resetPrescriptionForm();
    } catch (error) {
      this.#failed(error, this.el.rxError);
    } finally {
      this.el.rxSubmit.disabled = false;
      this.#renderPrescriptions();
    }
  }

  async #prescriptionAction(item, action) {
    const path = `/prescriptions/${encodeURIComponent(item.id)}`;
    try {
      if (action === "finalize") {
        const ok = await this.#confirm("confirm.rxTitle", "confirm.rxText", { inn: item.inn });
        if (!ok) return;
        const final = await this.#signed(() =>
          this.#api(`${path}/finalize`, { method: "POST", body: { version: item.version } }),
        );
        this.#replacePrescription(final);
        toast("rx.finalized");
      } else if (action === "delete") {
        await this.#api(path, { method: "DELETE" });
        this.prescriptions = this.prescriptions.filter((p) => p.id !== item.id);
        if (this.editing?.id === item.id) this.#resetPrescriptionForm();
        await this.#load(); // a deleted correction brings its final revision back
      } else if (action === "correct") {
        const draft = await this.#api(`${path}/corrections`, { method: "POST" });
        this.#replacePrescription(draft);
        this.#editPrescription(draft);
      } else if (action === "edit") {
        this.#editPrescription(item);
      }
    } catch (error) {
      this.#failed(error, this.el.error);
    }
    this.#renderPrescriptions();
  }

  #replacePrescription(item) {
    this.prescriptions = this.prescriptions.map((p) => (p.series_id === item.series_id ? item : p));
  }

  #editPrescription(item) {
    const form = this.el.rxForm;
    for (const element of form.elements) {
      const input = /** @type {HTMLInputElement} */ (element);
      if (!input.name) continue;
      const value = item[input.name];
      input.value = value === null || value === undefined ? "" : String(value);
    }
    this.editing = { id: item.id, version: item.version };
    setText(this.el.rxTitle, "rx.editTitle", { inn: item.inn });
    setText(this.el.rxSubmit, "rx.save");
    show(this.el.rxCancel, true);
    this.#rxFormChanged();
    byId("prescription-inn").focus();
  }

  /** Empty the form (and, with `forget`, its local copy). */
  #resetPrescriptionForm(forget = true) {
    this.el.rxForm.reset();
    this.editing = null;
    setText(this.el.rxTitle, "rx.new");
    setText(this.el.rxSubmit, "rx.add");
    show(this.el.rxCancel, false);
    clearProblem(this.el.rxError);
    if (forget && this.cid) storageSet(localStorage, RX_FORM_PREFIX + this.cid, null);
    this.#rxFormChanged(false);
  }

  /** Show the free-text fields for "other", and keep the unsent form in the local copy. */
  #rxFormChanged(remember = true) {
    show(byId("prescription-form-text-field"), byId("prescription-form-kind").value === "other");
    show(byId("prescription-route-text-field"), byId("prescription-route").value === "other");
    if (remember && this.cid && !this.editing) {
      storageSet(localStorage, RX_FORM_PREFIX + this.cid, JSON.stringify(this.#prescriptionBody()));
    }
  }

  #restorePrescriptionForm() {
    if (!this.cid || this.editing) return;
    let saved;
    try {
      saved = JSON.parse(storageGet(localStorage, RX_FORM_PREFIX + this.cid) ?? "null");
    } catch {
      saved = null;
    }
    if (!saved || typeof saved !== "object") return;
    for (const element of this.el.rxForm.elements) {
      const input = /** @type {HTMLInputElement} */ (element);
      const value = saved[input.name];
      if (input.name && value !== null && value !== undefined && value !== "") input.value = String(value);
    }
    this.#rxFormChanged(false);
  }

  // Referrals ----------------------------------------------------------------------

  async #submitReferral() {
    clearProblem(this.el.refError);
    const data = new FormData(this.el.refForm);
    const body = Object.fromEntries(
      ["kind", "target", "reason", "urgency"].map((name) => [name, String(data.get(name) ?? "").trim()]),
    );
    if (!body.target || !body.reason) {
      setText(this.el.refError, "ref.required");
      show(this.el.refError, true);
      return;
    }
    this.el.refSubmit.disabled = true;
    try {
      const made = await this.#api("/referrals", { method: "POST", body });
      this.referrals = [...this.referrals, made];
      this.el.refForm.reset();
    } catch (error) {
      this.#failed(error, this.el.refError);
    } finally {
      this.el.refSubmit.disabled = !this.#editable;
      this.#renderReferrals();
    }
  }

  async #removeReferral(id) {
    try {
      await this.#api(`/referrals/${encodeURIComponent(id)}`, { method: "DELETE" });
      this.referrals = this.referrals.filter((r) => r.id !== id);
    } catch (error) {
      this.#failed(error, this.el.error);
    }
    this.#renderReferrals();
  }

  // Rendering ----------------------------------------------------------------------

  #fieldText() {
    return Object.fromEntries(PARTS.map((part) => [part, this.fields[part].value]));
  }

  #setFields(text) {
    for (const part of PARTS) {
      if (this.fields[part].value !== text[part]) this.fields[part].value = text[part] ?? "";
    }
  }

  #renderAll() {
    this.#renderNote();
    this.#renderDiagnoses();
    this.#renderPrescriptions();
    this.#renderReferrals();
  }

  get #editable() {
    return this.note.status === "draft";
  }

  #renderNote() {
    const editable = this.#editable;
    for (const field of Object.values(this.fields)) field.readOnly = !editable;
    show(this.el.finalize, editable);
    show(this.el.correct, !editable);
    const revision = this.note.revision;
    show(this.el.revision, revision > 1 || !editable);
    if (!editable) setText(this.el.revision, "note.revisionFinal", { n: revision });
    else setText(this.el.revision, "note.revisionDraft", { n: revision });
    this.el.dxSearch.disabled = !editable;
    this.el.dxComment.disabled = !editable;
    this.el.refSubmit.disabled = !editable;
    this.#renderStatus();
  }

  #renderStatus() {
    const el = this.el.status;
    let status;
    let params;
    if (this.note.status === "final") status = "final";
    else if (this.saving) status = "saving";
    else if (this.dirty && (!navigator.onLine || isOffline(this.failure))) status = "offline";
    else if (this.dirty && this.failure) status = problemCode(this.failure) ? "error" : "offline";
    else if (this.dirty) status = "pending";
    else if (this.lastSaved) {
      status = "saved";
      params = { time: formatTime(this.lastSaved) };
    } else status = "idle";
    el.dataset.status = status;
    setText(el, `note.status.${status}`, params);
  }

  #renderDiagnoses() {
    const editable = this.#editable;
    this.el.dxList.replaceChildren(
      ...this.diagnoses.map((d) => {
        const item = document.createElement("li");
        item.className = "clinical-item";
        item.dataset.code = d.code;
        const head = document.createElement("div");
        head.className = "clinical-item-head";
        const code = document.createElement("strong");
        code.className = "icd-code";
        code.textContent = d.code;
        head.append(code);
        if (d.primary) {
          const badge = document.createElement("span");
          badge.className = "badge badge-primary";
          setText(badge, "dx.primary");
          head.append(badge);
        }
        const title = document.createElement("p");
        title.className = "icd-title";
        title.textContent = d.display;
        item.append(head, title);
        if (d.comment) {
          const comment = document.createElement("p");
          comment.className = "clinical-comment";
          comment.textContent = d.comment;
          item.append(comment);
        }
        if (editable) {
          const actions = document.createElement("div");
          actions.className = "clinical-item-actions";
          if (!d.primary) {
            const primary = button("dx.makePrimary", "diagnosis-make-primary");
            primary.addEventListener("click", () => this.#diagnosisAction("PATCH", d.id, { primary: true }));
            actions.append(primary);
          }
          const remove = button("common.remove", "diagnosis-remove", "btn btn-ghost btn-small");
          remove.addEventListener("click", () => this.#diagnosisAction("DELETE", d.id));
          actions.append(remove);
          item.append(actions);
        }
        return item;
      }),
    );
    show(this.el.dxEmpty, this.diagnoses.length === 0);
  }

  #renderPrescriptions() {
    this.el.rxList.replaceChildren(
      ...this.prescriptions.map((p) => {
        const item = document.createElement("li");
        item.className = "clinical-item";
        item.dataset.status = p.status;
        const head = document.createElement("div");
        head.className = "clinical-item-head";
        const name = document.createElement("strong");
        name.textContent = p.inn;
        const badge = document.createElement("span");
        badge.className = `badge badge-rx-${p.status === "final" ? "final" : "draft"}`;
        badge.dataset.testid = "prescription-status";
        setText(badge, p.status === "final" ? "rx.statusFinal" : "rx.statusDraft", { n: p.revision });
        head.append(name, badge);
        const summary = document.createElement("p");
        summary.className = "clinical-summary";
        summary.textContent = prescriptionSummary(p);
        item.append(head, summary);
        const actions = document.createElement("div");
        actions.className = "clinical-item-actions";
        const add = (key, testid, action, className) => {
          const el = button(key, testid, className);
          el.addEventListener("click", () => this.#prescriptionAction(p, action));
          actions.append(el);
        };
        if (p.status === "final") {
          add("rx.correct", "prescription-correct", "correct");
        } else {
          add("rx.finalize", "prescription-finalize", "finalize", "btn btn-primary btn-small");
          add("rx.edit", "prescription-edit", "edit");
          add("common.remove", "prescription-delete", "delete", "btn btn-ghost btn-small");
        }
        item.append(actions);
        return item;
      }),
    );
    show(this.el.rxEmpty, this.prescriptions.length === 0);
  }

  #renderReferrals() {
    const editable = this.#editable;
    this.el.refList.replaceChildren(
      ...this.referrals.map((r) => {
        const item = document.createElement("li");
        item.className = "clinical-item";
        const head = document.createElement("div");
        head.className = "clinical-item-head";
        const target = document.createElement("strong");
        target.textContent = r.target;
        const kind = document.createElement("span");
        kind.className = r.urgency === "urgent" ? "badge badge-urgent" : "badge";
        setText(kind, `ref.kind.${r.kind}`);
        head.append(target, kind);
        const reason = document.createElement("p");
        reason.className = "clinical-summary";
        reason.textContent = r.reason;
        item.append(head, reason);
        if (editable) {
          const remove = button("common.remove", "referral-remove", "btn btn-ghost btn-small");
          remove.addEventListener("click", () => this.#removeReferral(r.id));
          const actions = document.createElement("div");
          actions.className = "clinical-item-actions";
          actions.append(remove);
          item.append(actions);
        }
        return item;
      }),
    );
    show(this.el.refEmpty, this.referrals.length === 0);
  }

  // Tabs ---------------------------------------------------------------------------

  #selectTab(tab) {
    for (const other of this.tabs) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      show(byId(other.getAttribute("aria-controls") ?? ""), selected);
    }
  }

  /** Arrow keys move between tabs (the WAI-ARIA tabs pattern). */
  #tabKey(event, tab) {
    const index = this.tabs.indexOf(tab);
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    let next = null;
    if (step) next = this.tabs[(index + step + this.tabs.length) % this.tabs.length];
    else if (event.key === "Home") next = this.tabs[0];
    else if (event.key === "End") next = this.tabs[this.tabs.length - 1];
    if (!next) return;
    event.preventDefault();
    this.#selectTab(next);
    next.focus();
  }

  /** Show a failure: a 401 asks to sign in again; the text stays in the local copy. */
  #failed(error, alert) {
    const code = problemCode(error);
    // step-up-required is a 401 too, but signing in again is not what it asks for.
    const expired = error instanceof ApiError && error.unauthorized && code !== "step-up-required";
    const key = expired ? "clinical.signInAgain" : undefined;
    const specific = `clinical.code.${code}`;
    showProblem(alert, error, key ?? (has(specific) ? specific : undefined));
  }
}

function emptyText() {
  return Object.fromEntries(PARTS.map((part) => [part, ""]));
}

function pickText(source) {
  return Object.fromEntries(PARTS.map((part) => [part, typeof source?.[part] === "string" ? source[part] : ""]));
}

/**
 * Three-way merge per field: where this page changed a field since `base`, its text
 * wins; elsewhere the server's.
 */
function mergeText(base, mine, server) {
  return Object.fromEntries(
    PARTS.map((part) => [part, mine[part] !== base[part] ? mine[part] : server[part]]),
  );
}

function isOffline(error) {
  return error instanceof ApiError && error.status === 0;
}

/** "таблетки, 500 мг, внутрь, 3 раза в день, 5 дн.; 1 уп.; рецепт на 60 дн." */
function prescriptionSummary(p) {
  const form = p.form === "other" ? p.form_text : t(`rx.form.${p.form}`);
  const route = p.route === "other" ? p.route_text : t(`rx.route.${p.route}`);
  const frequency = p.times_per_day ? t("rx.timesPerDay", { n: p.times_per_day }) : p.frequency_text;
  const parts = [
    form,
    `${p.dose_value} ${t(`rx.unit.${p.dose_unit}`)}`,
    route,
    frequency,
    t("rx.days", { n: p.duration_days }),
    `${p.quantity} ${t(`rx.qunit.${p.quantity_unit}`)}`,
    p.valid_until
      ? t("rx.validUntil", { date: new Date(`${p.valid_until}T12:00:00`).toLocaleDateString(getLocale()) })
      : t("rx.validDays", { n: p.valid_days }),
  ];
  if (p.instructions) parts.push(p.instructions);
  return parts.filter(Boolean).join(" · ");
}

/** @type {ClinicalPanel|null} */
let panel = null;

/**
 * Open the clinical panel for a consultation (the first call builds it).
 * @param {string} consultationId
 * @param {string|null} token  the doctor's access token
 */
export function openClinical(consultationId, token) {
  panel ??= new ClinicalPanel();
  panel.open(consultationId, token);
}
