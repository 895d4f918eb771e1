/**
 * The REST API of telemed, as the pages use it: JSON in, JSON out, errors as
 * RFC 9457 problem documents turned into {@link ApiError}s that can be shown to people.
 */

import { has, setText } from "./i18n.js";

const API_ROOT = "/api/v1";

/** A failed API call: an HTTP problem, or `status` 0 when the server was not reached. */
export class ApiError extends Error {
  /**
   * @param {{status: number, title?: string, detail?: string, type?: string}} problem
   */
  constructor({ status, title = "", detail = "", type = "about:blank" }) {
    super(detail || title || `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.title = title;
    this.detail = detail;
    this.type = type;
  }

  /** True when the server answered 401: the access token is missing, wrong or expired. */
  get unauthorized() {
    return this.status === 401;
  }
}

async function readBody(response) {
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function problemFrom(response, body) {
  const problem = body && typeof body === "object" ? body : {};
  return new ApiError({
    status: response.status,
    title: typeof problem.title === "string" ? problem.title : response.statusText,
    detail: typeof problem.detail === "string" ? problem.detail : "",
    type: typeof problem.type === "string" ? problem.type : "about:blank",
  });
}

/**
 * Call the API. Resolves with the parsed JSON body; rejects with an {@link ApiError}.
 * @param {string} path  below /api/v1, starting with "/"
 * @param {{method?: string, body?: unknown, token?: string|null}} [options]
 */
export async function apiRequest(path, { method = "GET", body, token } = {}) {
  const headers = { Accept: "application/json, application/problem+json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(API_ROOT + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch {
    throw new ApiError({ status: 0, title: "network error" });
  }
  const payload = await readBody(response);
  if (!response.ok) throw problemFrom(response, payload);
  return payload ?? {};
}

/**
 * Sign in with a password, plus the TOTP `code` once the server asked for one (problem
 * `totp-required`). Resolves with `{access_token, token_type, expires_in, refresh_token, role}`.
 */
export function login(username, password, code) {
  const body = code ? { username, password, code } : { username, password };
  return apiRequest("/login", { method: "POST", body });
}

/**
 * Exchange an access token and a TOTP code for a fresh token that shows a recent second
 * factor (needed to sign clinical records). Resolves with `{access_token, …}`.
 */
export function stepUp(token, code) {
  return apiRequest("/token/step-up", { method: "POST", body: { code }, token });
}

/** Revoke a refresh token (and those rotated from it); resolves even for an unknown one. */
export function logout(refreshToken) {
  return apiRequest("/logout", { method: "POST", body: { refresh_token: refreshToken } });
}

/** The stable code of a problem ("step-up-required", …), or "" for anything else. */
export function problemCodeOf(error) {
  return error instanceof ApiError ? String(error.type).split(":").pop() ?? "" : "";
}

/** The signed-in doctor's appointments for today, as an array. */
export async function listAppointments(token) {
  const body = await apiRequest("/appointments", { token });
  return Array.isArray(body.appointments) ? body.appointments : [];
}

/**
 * Start (or resume) a consultation.
 * Resolves with `{consultation_id, state, ticket, patient_url}`.
 */
export function startConsultation(token, consultationId) {
  return apiRequest(`/consultations/${encodeURIComponent(consultationId)}/start`, {
    method: "POST",
    token,
  });
}

/**
 * The i18n key (and parameters) of a short sentence saying what kind of failure
 * `error` is, so the summary follows language switches.
 * @returns {[string, Record<string, number>|undefined]}
 */
export function summaryKey(error) {
  if (!(error instanceof ApiError)) return ["api.status.5xx", undefined];
  if (error.status === 0) return ["api.network", undefined];
  if (error.status >= 500) return ["api.status.5xx", undefined];
  const key = `api.status.${error.status}`;
  return has(key) ? [key, undefined] : ["api.status.other", { status: error.status }];
}

/**
 * Show an error in an alert element: a translated summary, and the server's own
 * explanation (problem `detail`, else `title`) underneath when it adds something.
 * @param {HTMLElement} el  an element with role="alert"
 * @param {unknown} error
 * @param {string} [key]  an i18n key to use instead of the generic summary
 */
export function showProblem(el, error, key) {
  el.replaceChildren();
  const summary = document.createElement("strong");
  const [fallbackKey, params] = summaryKey(error);
  setText(summary, key ?? fallbackKey, key ? undefined : params);
  el.append(summary);
  const explanation =
    error instanceof ApiError && error.status !== 0 ? error.detail || error.title : "";
  if (explanation && explanation !== summary.textContent) {
    const detail = document.createElement("span");
    detail.className = "alert-detail";
    detail.textContent = explanation;
    el.append(detail);
  }
  if (!(error instanceof ApiError)) console.warn("telemed: unexpected error", error);
  el.hidden = false;
}

/** Hide and empty an alert element. */
export function clearProblem(el) {
  el.hidden = true;
  el.replaceChildren();
}
