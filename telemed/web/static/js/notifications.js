/**
 * The in-page notifications of a signed-in user: a button with the number of unread
 * ones in the top bar, their list, and a Server-Sent Events stream that adds new ones as
 * they are delivered. An `EventSource` cannot send the access token, so each connection
 * opens with a one-minute, single-use ticket got with it; a dropped stream reconnects
 * with a fresh ticket. Messages say only when or that (never anything medical): they are
 * shown as the server words them, Russian first.
 */

import { apiRequest } from "./api.js";
import { byId, show } from "./ui.js";

const RECONNECT_MS = 5_000;
const LIST_LIMIT = 20;

export class NotificationBell {
  /** @param {() => string|null} getToken  the page's current access token */
  constructor(getToken) {
    this.getToken = getToken;
    /** @type {Array<{id: number, title: string, body: string, link?: string, at: string, read: boolean}>} */
    this.items = [];
    /** @type {EventSource|null} */
    this.source = null;
    this.retry = 0;
    this.running = false;
    this.el = {
      root: byId("notifications"),
      open: byId("notifications-open"),
      count: byId("notifications-count"),
      panel: byId("notifications-panel"),
      list: byId("notifications-list"),
      empty: byId("notifications-empty"),
      read: /** @type {HTMLButtonElement} */ (byId("notifications-read")),
    };
    this.el.open.addEventListener("click", () => this.toggle());
    this.el.read.addEventListener("click", () => this.markAllRead());
  }

  /** Show the bell and follow the stream (again a no-op while it runs). */
  async start() {
    if (this.running || !this.getToken()) return;
    this.running = true;
    show(this.el.root, true);
    try {
      const answer = await apiRequest(`/notifications?unread=true&limit=${LIST_LIMIT}`, {
        token: this.getToken(),
      });
      this.items = Array.isArray(answer.notifications) ? answer.notifications : [];
    } catch {
      this.items = [];
    }
    this.render();
    this.connect();
  }

  /** Hide the bell, close the stream and forget the list (someone else may sign in next). */
  stop() {
    this.running = false;
    clearTimeout(this.retry);
    this.source?.close();
    this.source = null;
    this.items = [];
    this.render();
    show(this.el.panel, false);
    show(this.el.root, false);
  }

  async connect() {
    if (!this.running) return;
    const token = this.getToken();
    if (!token) return;
    try {
      const answer = await apiRequest("/notifications/stream-ticket", { method: "POST", token });
      if (!this.running) return;
      const source = new EventSource(String(answer.stream_url));
      source.addEventListener("notification", (event) => this.add(JSON.parse(event.data)));
      source.addEventListener("error", () => {
        // The ticket is spent: reconnecting takes a new one, not the browser's retry.
        source.close();
        if (this.source === source) this.source = null;
        this.later();
      });
      this.source = source;
    } catch {
      this.later();
    }
  }

  later() {
    clearTimeout(this.retry);
    if (this.running) this.retry = setTimeout(() => this.connect(), RECONNECT_MS);
  }

  add(item) {
    if (!item || this.items.some((known) => known.id === item.id)) return;
    this.items.unshift(item);
    this.items.length = Math.min(this.items.length, LIST_LIMIT);
    this.render();
  }

  toggle() {
    const open = this.el.panel.hidden;
    show(this.el.panel, open);
    this.el.open.setAttribute("aria-expanded", String(open));
  }

  async markAllRead() {
    this.el.read.disabled = true;
    try {
      await apiRequest("/notifications/read", { method: "POST", body: { all: true }, token: this.getToken() });
      for (const item of this.items) item.read = true;
      this.render();
    } catch {
      // Still unread on the server: the list stays as it is.
    } finally {
      this.el.read.disabled = false;
    }
  }

  render() {
    const unread = this.items.filter((item) => !item.read).length;
    this.el.count.textContent = String(unread);
    show(this.el.count, unread > 0);
    this.el.list.replaceChildren(
      ...this.items.map((item) => {
        const row = document.createElement("li");
        row.className = item.read ? "notification" : "notification notification-unread";
        row.dataset.testid = "notification-item";
        const title = document.createElement("strong");
        title.textContent = item.title;
        const body = document.createElement("p");
        body.textContent = item.body;
        row.append(title, body);
        if (item.link && item.link.startsWith("/")) {
          const link = document.createElement("a");
          link.href = item.link;
          link.textContent = item.link;
          row.append(link);
        }
        return row;
      }),
    );
    show(this.el.empty, this.items.length === 0);
  }
}
