/**
 * Step-up for signing clinical records: when the server answers a finalization with the
 * problem `step-up-required`, ask the doctor for a code from their authenticator app
 * (the `step-up` dialog of the page), exchange it at POST /api/v1/token/step-up and
 * retry. Nothing typed is touched: drafts stay where the clinical panel keeps them.
 */

import { ApiError, clearProblem, problemCodeOf, showProblem, stepUp } from "./api.js";
import { setText } from "./i18n.js";
import { byId } from "./ui.js";

/** @type {Array<(token: string) => void>} */
const tokenListeners = [];

/** Be told of every fresh token a step-up produced (the console stores it). */
export function onTokenRenewed(listener) {
  tokenListeners.push(listener);
}

/**
 * Run `call(token)`; when it fails with `step-up-required`, ask for a code, exchange it
 * and run `call` once more with the new token. Resolves with `call`'s result and the
 * token used last; rejects with the original problem when the doctor cancels.
 * @template T
 * @param {string|null} token
 * @param {(token: string|null) => Promise<T>} call
 * @returns {Promise<{result: T, token: string|null}>}
 */
export async function withStepUp(token, call) {
  try {
    return { result: await call(token), token };
  } catch (error) {
    if (problemCodeOf(error) !== "step-up-required") throw error;
    const fresh = await askForCode(token);
    if (!fresh) throw error;
    for (const listener of tokenListeners) listener(fresh);
    return { result: await call(fresh), token: fresh };
  }
}

/**
 * Show the dialog until a code is accepted (resolves with the new access token) or the
 * doctor cancels (resolves null). A wrong code keeps the dialog open with a message.
 * @param {string|null} token
 * @returns {Promise<string|null>}
 */
function askForCode(token) {
  const dialog = /** @type {HTMLDialogElement} */ (byId("step-up"));
  const form = /** @type {HTMLFormElement} */ (byId("step-up-form"));
  const input = /** @type {HTMLInputElement} */ (byId("step-up-code"));
  const submit = /** @type {HTMLButtonElement} */ (byId("step-up-submit"));
  const cancel = byId("step-up-cancel");
  const alert = byId("step-up-error");
  input.value = "";
  clearProblem(alert);
  return new Promise((resolve) => {
    const finish = (answer) => {
      form.removeEventListener("submit", onSubmit);
      cancel.removeEventListener("click", onCancel);
      dialog.removeEventListener("cancel", onCancel);
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    const onCancel = (event) => {
      event.preventDefault();
      finish(null);
    };
    const onSubmit = async (event) => {
      // The form's method="dialog" would close the dialog before the server answers.
      event.preventDefault();
      const code = input.value.replace(/\s+/g, "");
      if (!/^\d{6}$/.test(code)) {
        input.focus();
        return;
      }
      submit.disabled = true;
      setText(submit, "stepUp.busy");
      try {
        const answer = await stepUp(token, code);
        finish(String(answer.access_token));
      } catch (error) {
        const code = problemCodeOf(error);
        const key =
          code === "totp-invalid" ? "stepUp.invalid" : code === "account-locked" ? "login.locked" : undefined;
        showProblem(alert, error instanceof ApiError ? error : new ApiError({ status: 0 }), key);
        input.select();
      } finally {
        submit.disabled = false;
        setText(submit, "stepUp.submit");
      }
    };
    form.addEventListener("submit", onSubmit);
    cancel.addEventListener("click", onCancel);
    dialog.addEventListener("cancel", onCancel);
    dialog.showModal();
    input.focus();
  });
}
