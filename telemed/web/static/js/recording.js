/**
 * Consent to recording and the recording itself, on both pages.
 *
 * Each participant decides in the consent panel (`consent-accept`, `consent-decline`);
 * the server records the choice and tells everyone whether recording runs (it does only
 * while everyone in the call has accepted). While it runs and this participant has
 * accepted, the page publishes its own camera and microphone, send-only, to the
 * recorder over WHIP (RFC 9725); otherwise it publishes nothing. `recording-indicator`
 * shows on both pages while recording runs.
 */

import { setText } from "./i18n.js";
import { byId, show, toastCode } from "./ui.js";

/** How long to wait for ICE gathering: WHIP here has no trickle, the offer carries all. */
const GATHERING_TIMEOUT_MS = 3000;
/** After a failed publish, try again after this long (while recording still runs). */
const RETRY_MS = 3000;

/** One WHIP publication: a send-only peer connection and its resource on the server. */
export class WhipPublisher {
  /** @type {RTCPeerConnection|null} */
  #pc = null;
  /** @type {string|null} the session resource (Location of the 201) */
  #resource = null;
  #token;

  #instance;

  /**
   * @param {string} endpoint  the WHIP endpoint URL
   * @param {string} token  bearer token (the join ticket)
   * @param {string|null} [instance]  this page's instance: a page another page of the
   *   same participant has replaced is refused
   */
  constructor(endpoint, token, instance = null) {
    this.endpoint = endpoint;
    this.#token = token;
    this.#instance = instance;
  }

  /** True while a publication is set up or running. */
  get active() {
    return this.#pc !== null;
  }

  /**
   * Publish every track of `stream`. Throws an Error with `code` (the problem type's
   * last part, or "network") when the server refuses or cannot be reached.
   * @param {MediaStream} stream
   * @param {RTCIceServer[]} iceServers
   * @param {(state: string) => void} [onState]  the connection's state changes
   */
  async publish(stream, iceServers, onState = () => {}) {
    const pc = new RTCPeerConnection({ iceServers, bundlePolicy: "max-bundle" });
    this.#pc = pc;
    pc.addEventListener("connectionstatechange", () => onState(pc.connectionState));
    try {
      for (const track of stream.getTracks()) {
        pc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
      }
      await pc.setLocalDescription(await pc.createOffer());
      await gatheringComplete(pc);
      let response;
      try {
        response = await fetch(this.endpoint, {
          method: "POST",
          headers: {
            "Content-Type": "application/sdp",
            Authorization: `Bearer ${this.#token}`,
            ...(this.#instance ? { "X-Telemed-Instance": this.#instance } : {}),
          },
          body: pc.localDescription.sdp,
        });
      } catch (error) {
        throw withCode(new Error(`recorder unreachable: ${error.message}`), "network");
      }
      if (response.status !== 201) throw await problemError(response);
      const location = response.headers.get("Location");
      const resource = location ? new URL(location, this.endpoint).href : null;
      const answer = await response.text();
      if (this.#pc !== pc) {
        // Stopped while the server answered: end the session it just opened.
        if (resource) this.#delete(resource);
        return;
      }
      this.#resource = resource;
      await pc.setRemoteDescription({ type: "answer", sdp: answer });
    } catch (error) {
      if (this.#pc === pc) await this.stop();
      throw error;
    }
  }

  /** End the publication: DELETE the resource (even while the page unloads) and close. */
  async stop() {
    const pc = this.#pc;
    const resource = this.#resource;
    this.#pc = null;
    this.#resource = null;
    pc?.close();
    if (resource) await this.#delete(resource);
  }

  async #delete(resource) {
    try {
      await fetch(resource, {
        method: "DELETE",
        headers: { Authorization: `Bearer ${this.#token}` },
        keepalive: true,
      });
    } catch {
      // The recorder also ends the segment when the connection goes away.
    }
  }
}

function gatheringComplete(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(done, GATHERING_TIMEOUT_MS);
    function done() {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    }
    function check() {
      if (pc.iceGatheringState === "complete") done();
    }
    pc.addEventListener("icegatheringstatechange", check);
  });
}

async function problemError(response) {
  let code = `http_${response.status}`;
  let detail = response.statusText;
  try {
    const problem = await response.json();
    if (typeof problem.type === "string") code = problem.type.split(":").pop().replaceAll("-", "_");
    if (typeof problem.detail === "string") detail = problem.detail;
  } catch {
    // Not a problem document: keep the status.
  }
  return withCode(new Error(detail), code);
}

function withCode(error, code) {
  error.code = code;
  return error;
}

/**
 * The consent panel, the indicator and the publisher of one page, driven by a
 * CallSession's `recording` and `state` events.
 */
export class RecordingControl {
  /** @type {import("./call.js").CallSession|null} */
  #session = null;
  /** @type {WhipPublisher|null} */
  #publisher = null;
  #retryTimer = null;
  #busy = false;
  /** The server stopped our recording (e.g. its disk is full): no retries until the
   * recording state changes again. */
  #halted = false;

  constructor() {
    this.el = {
      panel: byId("consent-panel"),
      status: byId("consent-status"),
      accept: /** @type {HTMLButtonElement} */ (byId("consent-accept")),
      decline: /** @type {HTMLButtonElement} */ (byId("consent-decline")),
      indicator: byId("recording-indicator"),
    };
    this.el.accept.addEventListener("click", () => this.#choose(true));
    this.el.decline.addEventListener("click", () => this.#choose(false));
    window.addEventListener("pagehide", () => this.#stopPublishing());
    this.#render();
  }

  /** Follow this session (a new page session replaces the old one). */
  attach(session) {
    this.#stopPublishing();
    this.#halted = false;
    this.#session = session;
    session.addEventListener("closed", () => {
      if (this.#session !== session) return;
      this.#session = null;
      this.#update();
    });
    session.addEventListener("recording", () => {
      this.#halted = false;
      this.#update();
    });
    session.addEventListener("recording-error", (event) => {
      toastCode(String(event.detail.code ?? "recording_failed"), "");
      if (event.detail.participant_id === session.participantId) {
        this.#halted = true;
        this.#update();
      }
    });
    session.addEventListener("state", () => this.#update());
    session.addEventListener("ended", () => this.#update());
    this.#update();
  }

  async #choose(accepted) {
    const session = this.#session;
    if (!session || this.#busy) return;
    this.#busy = true;
    this.#render();
    try {
      const ack = await session.consent(accepted);
      if (!ack.ok) toastCode(ack.code, ack.message);
    } finally {
      this.#busy = false;
      this.#update();
    }
  }

  #inCall() {
    const session = this.#session;
    if (!session || session.closed || !session.whipUrl) return false;
    return session.admitted && !["ended", "idle"].includes(session.state.state);
  }

  #update() {
    this.#render();
    const recording = this.#session?.recording;
    const mayPublish =
      this.#inCall() && !this.#halted && recording?.active && recording.consent === "accepted";
    if (mayPublish) {
      this.#startPublishing();
    } else {
      clearTimeout(this.#retryTimer);
      this.#retryTimer = null;
      this.#stopPublishing();
    }
  }

  #render() {
    const recording = this.#session?.recording ?? { active: false, consent: null };
    const inCall = this.#inCall();
    show(this.el.panel, inCall);
    show(this.el.indicator, inCall && recording.active && !this.#halted);
    const accepted = recording.consent === "accepted";
    show(this.el.accept, !accepted);
    setText(this.el.decline, accepted ? "consent.withdraw" : "consent.decline");
    show(this.el.decline, recording.consent !== "declined" || accepted);
    this.el.accept.disabled = this.#busy;
    this.el.decline.disabled = this.#busy;
    const status = this.#halted
      ? "consent.status.halted"
      : accepted
      ? recording.active
        ? "consent.status.recording"
        : "consent.status.waiting"
      : recording.consent === "declined"
        ? "consent.status.declined"
        : "consent.status.undecided";
    setText(this.el.status, status);
  }

  #startPublishing() {
    const session = this.#session;
    const stream = session?.localStream;
    if (this.#publisher || this.#retryTimer || !session?.whipUrl) return;
    if (!stream || stream.getTracks().length === 0) return; // nothing of ours to record
    const publisher = new WhipPublisher(session.whipUrl, session.ticket, session.instance);
    this.#publisher = publisher;
    // The very tracks of the call: muting the microphone or turning the camera off
    // mutes the recording too. Stopping the recording never stops them.
    const onState = (state) => {
      const gone = state === "failed" || state === "closed" || state === "disconnected";
      if (gone && this.#publisher === publisher) this.#retryLater();
    };
    publisher.publish(stream, session.iceServers, onState).catch((error) => {
      if (this.#publisher !== publisher) return;
      toastCode(error.code ?? "recording_failed", error.message);
      if (error.code === "storage_full" || error.code === "superseded") {
        this.#halted = true;
        this.#update();
        return;
      }
      this.#retryLater();
    });
  }

  #retryLater() {
    this.#stopPublishing();
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      this.#update();
    }, RETRY_MS);
  }

  #stopPublishing() {
    const publisher = this.#publisher;
    this.#publisher = null;
    if (publisher) publisher.stop();
  }
}
