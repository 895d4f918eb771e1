/**
 * The sign-in of one page: its access and refresh tokens, kept in sessionStorage (so
 * they end with the tab and are never shared between pages), and the `#token=` a demo
 * link carries.
 */

import { logout } from "./api.js";
import { storageGet, storageSet } from "./ui.js";

export class PageSession {
  /** @param {string} name  the page's storage prefix ("doctor", "review", "account") */
  constructor(name) {
    this.tokenKey = `telemed.${name}.token`;
    this.refreshKey = `telemed.${name}.refresh`;
  }

  /** @returns {string|null} */
  get token() {
    return storageGet(sessionStorage, this.tokenKey);
  }

  /** @param {string|null} value */
  set token(value) {
    storageSet(sessionStorage, this.tokenKey, value);
  }

  /** Keep the tokens of a successful `POST /login`. */
  signedIn(answer) {
    this.token = String(answer.access_token);
    storageSet(sessionStorage, this.refreshKey, answer.refresh_token ? String(answer.refresh_token) : null);
  }

  /** Forget both tokens; the server revokes the refresh token (best effort: a failure
   *  there must not keep anyone signed in). */
  end() {
    this.token = null;
    const refresh = storageGet(sessionStorage, this.refreshKey);
    storageSet(sessionStorage, this.refreshKey, null);
    if (refresh) logout(refresh).catch(() => {});
  }

  /** Take `#token=…` from the address, then drop it from the address bar and history. */
  takeFromFragment() {
    const params = new URLSearchParams(location.hash.slice(1));
    const token = params.get("token");
    if (!token) return;
    this.token = token;
    params.delete("token");
    const rest = params.toString();
    history.replaceState(history.state, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
  }
}
