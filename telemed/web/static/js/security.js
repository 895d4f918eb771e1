/**
 * The second factor of the signed-in user: enrollment by QR code (or the secret typed
 * into an authenticator app), confirmed with a first code. Used by the doctor's console;
 * any page with a bearer token can mount it.
 */

import { apiRequest, clearProblem, problemCodeOf, showProblem } from "./api.js";
import { setText } from "./i18n.js";
import { byId, show } from "./ui.js";

export class SecurityPanel {
  /**
   * @param {() => string|null} getToken  the current access token
   * @param {() => void} onUnauthorized  the token expired: sign in again
   */
  constructor(getToken, onUnauthorized) {
    this.getToken = getToken;
    this.onUnauthorized = onUnauthorized;
    this.el = {
      status: byId("security-status"),
      start: /** @type {HTMLButtonElement} */ (byId("security-start")),
      enroll: byId("security-enroll"),
      qr: /** @type {HTMLImageElement} */ (byId("security-qr")),
      secret: byId("security-secret"),
      form: /** @type {HTMLFormElement} */ (byId("security-form")),
      code: /** @type {HTMLInputElement} */ (byId("security-code")),
      confirm: /** @type {HTMLButtonElement} */ (byId("security-confirm")),
      error: byId("security-error"),
    };
    this.el.start.addEventListener("click", () => this.begin());
    this.el.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.confirm();
    });
  }

  /** Show the panel in its first state: nothing started yet. */
  reset() {
    clearProblem(this.el.error);
    show(this.el.enroll, false);
    show(this.el.start, true);
    this.el.code.value = "";
    this.el.qr.removeAttribute("src");
    this.el.secret.textContent = "";
    setText(this.el.status, "security.intro");
    this.el.status.dataset.state = "unknown";
  }

  async begin() {
    clearProblem(this.el.error);
    this.el.start.disabled = true;
    try {
      const answer = await apiRequest("/account/totp", { method: "POST", token: this.getToken() });
      // An SVG from our own server, shown as an image: nothing in it can run.
      this.el.qr.src = `data:image/svg+xml;base64,${btoa(String(answer.qr_svg))}`;
      this.el.secret.textContent = String(answer.secret).replace(/(.{4})/g, "$1 ").trim();
      show(this.el.start, false);
      show(this.el.enroll, true);
      setText(this.el.status, "security.scan");
      this.el.status.dataset.state = "pending";
      this.el.code.focus();
    } catch (error) {
      this.fail(error);
    } finally {
      this.el.start.disabled = false;
    }
  }

  async confirm() {
    const code = this.el.code.value.replace(/\s+/g, "");
    if (!/^[0-9]{6}$/.test(code)) {
      this.el.code.focus();
      return;
    }
    clearProblem(this.el.error);
    this.el.confirm.disabled = true;
    try {
      await apiRequest("/account/totp/confirm", { method: "POST", body: { code }, token: this.getToken() });
      show(this.el.enroll, false);
      setText(this.el.status, "security.enabled");
      this.el.status.dataset.state = "enabled";
    } catch (error) {
      this.fail(error);
      this.el.code.select();
    } finally {
      this.el.confirm.disabled = false;
    }
  }

  fail(error) {
    const code = problemCodeOf(error);
    if (code === "totp-already-enabled") {
      show(this.el.start, false);
      setText(this.el.status, "security.enabled");
      this.el.status.dataset.state = "enabled";
      return;
    }
    if (code === "token-expired" || code === "token-invalid" || code === "token-missing") {
      this.onUnauthorized();
      return;
    }
    showProblem(this.el.error, error, code === "totp-invalid" ? "security.invalid" : undefined);
  }
}
