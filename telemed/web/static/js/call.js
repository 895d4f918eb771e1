/**
 * The call logic shared by the doctor's console and the patient's page: the Socket.IO
 * connection to the `/consultation` signaling namespace and one RTCPeerConnection per
 * remote participant.
 *
 * Negotiation is deliberately one-sided: the doctor always offers, the patient only
 * answers, so there is never glare. A peer connection remembers the remote page
 * `instance` it was made for: the same instance coming back (a network blip) gets an
 * ICE restart on the same connection; a new instance (a reload) gets a new connection.
 *
 * {@link CallSession} knows nothing of the DOM; pages listen to its events:
 *   state         {state, reason}  state ∈ idle|lobby|connecting|connected|reconnecting|ended
 *   joined        {participantId, role, displayName, status, consultationState}
 *   lobby         {waiting: Peer[]}          (doctor) the current waiting list
 *   chat          {message}                  each chat message once, history included
 *   remote-stream {participantId, stream}    a remote participant's media
 *   remote-gone   {participantId}
 *   notice        {code, message, event}     a non-fatal refusal worth a toast
 *   fatal         {code, message}            cannot go on (e.g. the ticket is refused)
 *   ended         {reason}                   the consultation is over
 */

import { io } from "/static/vendor/socket.io/socket.io.esm.min.js";

const NAMESPACE = "/consultation";
const ACK_TIMEOUT_MS = 10_000;
/** How long a peer that lost its connection keeps its place (the server's grace period). */
const PEER_GRACE_MS = 60_000;
/** A connection "disconnected" this long gets an ICE restart without waiting for "failed". */
const DISCONNECTED_RESTART_MS = 5_000;
/** While the consultation is only scheduled, ask again this often whether it has started. */
const LOBBY_POLL_MS = 15_000;
const JOIN_RETRY_MS = 3_000;
const MAX_SERVER_KICKS = 5;
const MIN_RENEW_INTERVAL_MS = 30_000;
const MAX_BUFFERED_CANDIDATES = 100;
/** Join refusals that are worth another try; any other refusal is final. */
const RETRYABLE_JOIN_CODES = new Set(["rate_limited", "internal_error", "timeout"]);

const VIDEO_CONSTRAINTS = {
  width: { ideal: 1280 },
  height: { ideal: 720 },
  facingMode: "user",
};

/** A random id for this page load, kept across socket reconnects: `[0-9a-f]{32}`. */
export function newInstanceId() {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID().replaceAll("-", "");
  // randomUUID needs a secure context; getRandomValues does not.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Ask for the camera and the microphone. When one of them is missing or busy, settle
 * for the other one; when the user refuses, do not ask again.
 * @returns {Promise<{stream: MediaStream|null, error: (Error & {name: string})|null}>}
 *   `stream` is null when nothing could be opened; `error` is set whenever something
 *   was missing (so both are set for a partial success).
 */
export async function getLocalMedia() {
  const devices = navigator.mediaDevices;
  if (!devices || typeof devices.getUserMedia !== "function") {
    const error = new Error("getUserMedia is not available (insecure context?)");
    error.name = "InsecureContextError";
    return { stream: null, error };
  }
  try {
    return { stream: await devices.getUserMedia({ audio: true, video: VIDEO_CONSTRAINTS }), error: null };
  } catch (error) {
    if (error?.name === "NotAllowedError" || error?.name === "SecurityError") {
      return { stream: null, error };
    }
    for (const constraints of [{ audio: true }, { video: VIDEO_CONSTRAINTS }]) {
      try {
        return { stream: await devices.getUserMedia(constraints), error };
      } catch {
        // Try the other kind.
      }
    }
    return { stream: null, error };
  }
}

/** Stop every track of a stream (turns the camera light off). Accepts null. */
export function stopStream(stream) {
  if (!stream) return;
  for (const track of stream.getTracks()) track.stop();
}

/** The ICE usernames (ufrags) a session description announces. */
function ufragsOf(sdp) {
  return new Set(Array.from(String(sdp).matchAll(/^a=ice-ufrag:(\S+)/gm), (m) => m[1]));
}

function isObject(value) {
  return value !== null && typeof value === "object";
}

/** An RTCPeerConnection to one remote participant's page, and its negotiation state. */
class PeerLink {
  /**
   * @param {string} participantId
   * @param {string|null} instance  the remote page this connection was made for
   * @param {RTCConfiguration} config
   */
  constructor(participantId, instance, config) {
    this.participantId = participantId;
    this.instance = instance;
    this.pc = new RTCPeerConnection(config);
    this.closed = false;
    this.tracksAdded = false;
    /** @type {MediaStream|null} */
    this.remoteStream = null;
    /** @type {ReturnType<typeof setTimeout>|null} */
    this.disconnectedTimer = null;
    /** Candidates that cannot be applied yet: no remote description, or a newer ICE generation. */
    this.pendingCandidates = [];
    this.remoteUfrags = new Set();
    this.queue = Promise.resolve();
  }

  /**
   * Run negotiation steps one after another: two offers, or an offer and an answer,
   * must never interleave on one connection.
   * @param {() => Promise<void>} task
   */
  run(task) {
    this.queue = this.queue
      .then(() => (this.closed ? undefined : task()))
      .catch((error) => {
        if (!this.closed) console.warn("telemed: WebRTC negotiation step failed", error);
      });
    return this.queue;
  }

  /**
   * Send the local media. With `ensureBothKinds` (the offerer), also negotiate audio and
   * video that we do not send, so the remote side can still send them to us.
   * @param {MediaStream|null} stream
   * @param {boolean} ensureBothKinds
   */
  addLocalMedia(stream, ensureBothKinds) {
    if (this.tracksAdded) return;
    this.tracksAdded = true;
    const tracks = stream ? stream.getTracks() : [];
    for (const track of tracks) this.pc.addTrack(track, stream);
    if (!ensureBothKinds) return;
    for (const kind of ["audio", "video"]) {
      if (!tracks.some((track) => track.kind === kind)) {
        this.pc.addTransceiver(kind, { direction: "sendrecv" });
      }
    }
  }

  /** Apply a remote description, then any candidates that were waiting for it. */
  async setRemote(description) {
    await this.pc.setRemoteDescription(description);
    this.remoteUfrags = ufragsOf(description.sdp);
    const pending = this.pendingCandidates;
    this.pendingCandidates = [];
    for (const candidate of pending) await this.addCandidate(candidate);
  }

  /** Apply a remote ICE candidate now, or keep it until its description has arrived. */
  async addCandidate(candidate) {
    const early =
      !this.pc.remoteDescription ||
      (candidate.usernameFragment && !this.remoteUfrags.has(candidate.usernameFragment));
    if (early) {
      this.pendingCandidates.push(candidate);
      if (this.pendingCandidates.length > MAX_BUFFERED_CANDIDATES) this.pendingCandidates.shift();
      return;
    }
    try {
      await this.pc.addIceCandidate(candidate);
    } catch {
      // A candidate of an ICE generation that is already gone: harmless.
    }
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.disconnectedTimer);
    this.pc.onicecandidate = null;
    this.pc.ontrack = null;
    this.pc.onconnectionstatechange = null;
    this.pc.close();
  }
}

/** A refusal produced on this side (no connection, no answer in time). */
class LocalFailure extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/**
 * One participant's side of one consultation: signaling plus peer connections.
 * Create it, subscribe to its events, then call {@link CallSession#start}.
 */
export class CallSession extends EventTarget {
  #ticket;
  #consultationId;
  #localStream;
  #renewTicket;
  #instance = newInstanceId();
  /** @type {import("/static/vendor/socket.io/socket.io.esm.min.js").Socket|null} */
  #socket = null;

  /** @type {{participantId: string, role: string, displayName: string}|null} */
  #me = null;
  /** "lobby" | "admitted" | null (not joined yet, or left) */
  #status = null;
  #consultationState = null;
  /** @type {RTCIceServer[]} */
  #iceServers = [];

  /** @type {Map<string, PeerLink>} by remote participant id */
  #links = new Map();
  /** Peers whose signaling connection dropped: participant id → grace timer. */
  #lost = new Map();
  /** Candidates that arrived before their peer connection: "participant\ninstance" → list. */
  #orphanCandidates = new Map();
  /** Signals held back until the admitted join has been processed. */
  #heldSignals = [];

  #connected = false;
  #joined = false;
  #everJoined = false;
  #serverUnreachable = false;
  #left = false;
  #failed = false;
  #ended = false;
  #endReason = null;
  #serverKicks = 0;
  #lastRenewAt = 0;
  #lobbyPollTimer = null;
  #joinRetryTimer = null;
  /** @type {{state: string, reason: string|null}} */
  #state = { state: "idle", reason: null };
  #seenChat = new Set();
  #closed = false;
  /** @type {{active: boolean, consents: Object<string, string|null>}} */
  #recording = { active: false, consents: {} };
  /** Where this participant publishes its tracks while recording (WHIP), from the join. */
  #whipUrl = null;

  /**
   * @param {object} options
   * @param {string} options.ticket  the join ticket for this consultation
   * @param {string|null} [options.consultationId]  sent along so the server can refuse a
   *   ticket of another consultation with `wrong_consultation`
   * @param {MediaStream|null} [options.localStream]
   * @param {(() => Promise<string>)|null} [options.renewTicket]  fetches a fresh ticket
   *   when the server says the current one has expired (the doctor can; the patient cannot)
   */
  constructor({ ticket, consultationId = null, localStream = null, renewTicket = null }) {
    super();
    this.#ticket = ticket;
    this.#consultationId = consultationId;
    this.#localStream = localStream;
    this.#renewTicket = renewTicket;
  }

  /** "doctor" or "patient" once joined, else null. */
  get role() {
    return this.#me?.role ?? null;
  }

  /** This page's instance id: the server knows which page of a participant is current. */
  get instance() {
    return this.#instance;
  }

  /** This participant's id once joined, else null. */
  get participantId() {
    return this.#me?.participantId ?? null;
  }

  /** The current call state and the reason for it. */
  get state() {
    return { ...this.#state };
  }

  /** The current join ticket (renewed tickets included): it also authorizes publishing. */
  get ticket() {
    return this.#ticket;
  }

  /** The WHIP endpoint for this participant's recording, once joined. */
  get whipUrl() {
    return this.#whipUrl;
  }

  /** ICE servers from the join, for the recording connection as for the call. */
  get iceServers() {
    return [...this.#iceServers];
  }

  /** The local camera and microphone stream given at construction, if any. */
  get localStream() {
    return this.#localStream;
  }

  /**
   * Recording as the server last told it: `active` and this participant's own choice
   * ("accepted", "declined" or null while undecided).
   */
  get recording() {
    const mine = this.participantId ? this.#recording.consents[this.participantId] ?? null : null;
    return { active: this.#recording.active, consent: mine, consents: { ...this.#recording.consents } };
  }

  /** True once the server has admitted this participant into the call. */
  get admitted() {
    return this.#status === "admitted" && !this.#left && !this.#ended;
  }

  /** Connect to signaling; joins on every (re)connect until ended, left or refused. */
  start() {
    if (this.#socket) return;
    const socket = io(NAMESPACE, {
      // A function, so a renewed ticket is used on the next reconnect.
      auth: (send) => {
        const auth = { ticket: this.#ticket };
        if (this.#consultationId) auth.consultation_id = this.#consultationId;
        send(auth);
      },
      transports: ["websocket"],
    });
    this.#socket = socket;
    socket.on("connect", () => this.#onConnect());
    socket.on("disconnect", (reason) => this.#onDisconnect(reason));
    socket.on("connect_error", (error) => this.#onConnectError(error));
    socket.on("lobby", (payload) => this.#onLobby(payload));
    socket.on("admitted", () => this.#onAdmitted());
    socket.on("peer_ready", (peer) => this.#onPeerReady(peer));
    socket.on("peer_left", (payload) => this.#onPeerLeft(payload));
    socket.on("signal", (message) => this.#onSignal(message));
    socket.on("chat", (message) => this.#addChat(message));
    socket.on("recording", (state) => this.#onRecording(state));
    socket.on("recording_error", (payload) => {
      if (isObject(payload)) this.#dispatch("recording-error", { ...payload });
    });
    socket.on("ended", (payload) => this.#finish(isObject(payload) ? payload.reason : null));
    socket.on("error", (payload) => this.#onServerError(payload));
    this.#updateState();
  }

  /** Doctor: let a waiting patient into the call. Resolves with the server's ack. */
  admit(participantId) {
    return this.#command("admit", { participant_id: participantId });
  }

  /** Send a chat message (trimmed, at most 4000 characters). Resolves with the ack. */
  async sendChat(text) {
    const trimmed = String(text).trim().slice(0, 4000);
    if (!trimmed) return { ok: false, code: "empty", message: "empty message" };
    const ack = await this.#command("chat", { text: trimmed });
    if (ack.ok && isObject(ack.message)) this.#addChat(ack.message);
    return ack;
  }

  /**
   * Patient: hang up. The call is torn down here whatever the server says; the socket
   * stays connected so that an `ended` from the doctor still arrives.
   */
  async leave() {
    const ack = await this.#command("leave", {});
    this.#left = true;
    this.#status = null;
    this.#clearTimers();
    this.#dropAllLinks();
    stopStream(this.#localStream);
    this.#updateState();
    return ack;
  }

  /**
   * Accept or decline (or withdraw) recording of the consultation. Resolves with the ack;
   * the new recording state also arrives as a `recording` event.
   */
  async consent(accepted) {
    const ack = await this.#command("consent", { accepted: Boolean(accepted) });
    if (ack.ok && isObject(ack.recording)) this.#onRecording(ack.recording);
    return ack;
  }

  /** Doctor: end the consultation for everyone. */
  async end() {
    const ack = await this.#command("end", {});
    // The server broadcasts `ended` before it acknowledges, and our disconnect on
    // `ended` then fails the pending ack: being ended is what counts.
    if (ack.ok || this.#ended) {
      this.#finish("ended_by_doctor");
      return { ...ack, ok: true };
    }
    return ack;
  }

  /** Tear everything down without ending the consultation (e.g. signing out). */
  close() {
    this.#clearTimers();
    this.#dropAllLinks();
    stopStream(this.#localStream);
    this.#socket?.off();
    this.#socket?.disconnect();
    this.#closed = true;
    // Listeners (the recording, say) must let go of this session now.
    this.#dispatch("closed", {});
  }

  /** True once {@link CallSession#close} was called: the page left this call. */
  get closed() {
    return this.#closed;
  }

  // Socket lifecycle ------------------------------------------------------------------

  #onConnect() {
    this.#connected = true;
    this.#serverUnreachable = false;
    if (!this.#left && !this.#ended) this.#join();
    this.#updateState();
  }

  #onDisconnect(reason) {
    this.#connected = false;
    this.#joined = false;
    this.#heldSignals = [];
    clearTimeout(this.#lobbyPollTimer);
    if (this.#ended || this.#failed || reason === "io client disconnect") {
      this.#updateState();
      return;
    }
    if (reason === "io server disconnect") {
      // Socket.IO does not reconnect by itself after the server closed the connection.
      this.#serverKicks += 1;
      if (this.#serverKicks > MAX_SERVER_KICKS) {
        this.#fail("server_disconnect", "the server keeps closing the connection");
        return;
      }
      setTimeout(() => {
        if (!this.#ended && !this.#failed) this.#socket?.connect();
      }, 1000 * this.#serverKicks);
    }
    this.#updateState();
  }

  async #onConnectError(error) {
    const code = error?.data?.code;
    if (!code || this.#socket?.active) {
      // Transport trouble: Socket.IO keeps retrying on its own.
      this.#serverUnreachable = true;
      this.#updateState();
      return;
    }
    if (code === "ticket_expired" && (await this.#tryRenewTicket())) return;
    this.#fail(code, error.message || code);
  }

  /** Ask for a fresh ticket and reconnect with it; false when that is not possible. */
  async #tryRenewTicket() {
    if (!this.#renewTicket || Date.now() - this.#lastRenewAt < MIN_RENEW_INTERVAL_MS) return false;
    this.#lastRenewAt = Date.now();
    try {
      const ticket = await this.#renewTicket();
      if (!ticket) return false;
      this.#ticket = ticket;
    } catch (error) {
      console.warn("telemed: could not renew the join ticket", error);
      return false;
    }
    this.#socket?.connect();
    return true;
  }

  #onServerError(payload) {
    if (!isObject(payload)) return;
    // Refused relays (a candidate for a peer that has just left) are routine.
    if (payload.event === "signal") return;
    this.#notice(String(payload.code ?? "error"), String(payload.message ?? ""), payload.event);
  }

  // Join -----------------------------------------------------------------------------

  async #join() {
    clearTimeout(this.#joinRetryTimer);
    let ack;
    try {
      ack = await this.#request("join", { instance: this.#instance });
    } catch (error) {
      ack = { ok: false, code: error.code ?? "timeout", message: error.message };
    }
    if (!this.#connected || this.#ended || this.#left || this.#failed) return;
    if (!ack.ok) {
      if (RETRYABLE_JOIN_CODES.has(ack.code)) {
        this.#joinRetryTimer = setTimeout(() => this.#connected && this.#join(), JOIN_RETRY_MS);
      } else {
        this.#fail(String(ack.code ?? "join_refused"), String(ack.message ?? ""));
      }
      return;
    }
    this.#applyJoin(ack);
  }

  #applyJoin(ack) {
    this.#me = {
      participantId: String(ack.participant_id),
      role: String(ack.role),
      displayName: String(ack.display_name ?? ""),
    };
    this.#iceServers = Array.isArray(ack.ice_servers) ? ack.ice_servers : [];
    this.#consultationState = ack.consultation_state ?? null;
    this.#whipUrl = typeof ack.whip_url === "string" ? ack.whip_url : null;
    this.#joined = true;
    this.#everJoined = true;
    this.#serverKicks = 0;
    for (const message of Array.isArray(ack.chat) ? ack.chat : []) this.#addChat(message);
    if (ack.status === "ended") {
      this.#finish("ended");
      return;
    }
    const wasAdmitted = this.#status === "admitted";
    this.#status = ack.status === "admitted" ? "admitted" : "lobby";
    this.#dispatch("joined", {
      participantId: this.#me.participantId,
      role: this.#me.role,
      displayName: this.#me.displayName,
      status: this.#status,
      consultationState: this.#consultationState,
    });
    if (Array.isArray(ack.waiting)) this.#showWaiting(ack.waiting.filter(isObject));
    if (this.#status === "lobby") {
      // Back in the lobby (e.g. returned after the grace period): the old call is gone.
      this.#heldSignals = [];
      if (wasAdmitted) this.#dropAllLinks();
      this.#scheduleLobbyPoll();
      this.#updateState();
      return;
    }
    clearTimeout(this.#lobbyPollTimer);
    if (isObject(ack.recording)) this.#onRecording(ack.recording);
    const peers = (Array.isArray(ack.peers) ? ack.peers : []).filter(isObject);
    this.#reconcile(peers);
    const held = this.#heldSignals;
    this.#heldSignals = [];
    for (const message of held) this.#onSignal(message);
    if (this.role === "doctor") {
      for (const peer of peers) if (peer.role === "patient") this.#connectTo(peer);
    }
    this.#updateState();
  }

  /**
   * After a join, compare our connections with who is online: a peer that is gone may
   * still come back within the grace period; a peer on a new page needs a new connection.
   */
  #reconcile(peers) {
    const online = new Map(peers.map((peer) => [String(peer.participant_id), peer]));
    for (const [participantId, link] of this.#links) {
      const peer = online.get(participantId);
      if (!peer) this.#markLost(participantId);
      else if (peer.instance !== link.instance && this.role !== "doctor") this.#dropLink(participantId);
    }
    for (const participantId of online.keys()) this.#clearLost(participantId);
  }

  /** While the doctor has not started yet, nothing tells the lobby; so ask again now and then. */
  #scheduleLobbyPoll() {
    clearTimeout(this.#lobbyPollTimer);
    if (this.#consultationState !== "scheduled") return;
    this.#lobbyPollTimer = setTimeout(() => {
      if (this.#connected && this.#status === "lobby" && !this.#left) this.#join();
    }, LOBBY_POLL_MS);
  }

  // Server events --------------------------------------------------------------------

  #onLobby(payload) {
    if (!isObject(payload) || !Array.isArray(payload.waiting)) return;
    this.#showWaiting(payload.waiting.filter(isObject));
  }

  /** Doctor: publish the waiting list; a patient back in the lobby has no call any more. */
  #showWaiting(waiting) {
    for (const peer of waiting) {
      const participantId = String(peer.participant_id);
      if (this.#links.has(participantId)) {
        this.#clearLost(participantId);
        this.#dropLink(participantId);
      }
    }
    this.#dispatch("lobby", { waiting });
    this.#updateState();
  }

  #onRecording(state) {
    if (!isObject(state)) return;
    this.#recording = {
      active: state.active === true,
      consents: isObject(state.consents) ? { ...state.consents } : {},
    };
    this.#dispatch("recording", this.recording);
  }

  #onAdmitted() {
    // The server wants a fresh join from the same page; its ack says "admitted".
    if (this.#connected && !this.#left && !this.#ended) this.#join();
  }

  #onPeerReady(peer) {
    if (!isObject(peer) || !peer.participant_id || !this.admitted) return;
    const participantId = String(peer.participant_id);
    this.#clearLost(participantId);
    if (this.role === "doctor") {
      if (peer.role === "patient") this.#connectTo(peer);
    } else {
      // The doctor on a new page will offer on a new connection; drop the old one now.
      const link = this.#links.get(participantId);
      if (link && link.instance !== peer.instance) this.#dropLink(participantId);
    }
    this.#updateState();
  }

  #onPeerLeft(payload) {
    if (!isObject(payload) || !payload.participant_id) return;
    const participantId = String(payload.participant_id);
    if (payload.reason === "connection_lost") {
      // The doctor also hears about patients dropping out of the lobby: those had no call.
      if (this.#links.has(participantId) || this.role !== "doctor") this.#markLost(participantId);
    } else {
      this.#clearLost(participantId);
      this.#dropLink(participantId);
    }
    this.#updateState();
  }

  #markLost(participantId) {
    if (this.#lost.has(participantId)) return;
    const timer = setTimeout(() => {
      this.#lost.delete(participantId);
      this.#dropLink(participantId);
      this.#updateState();
    }, PEER_GRACE_MS);
    this.#lost.set(participantId, timer);
  }

  #clearLost(participantId) {
    clearTimeout(this.#lost.get(participantId));
    this.#lost.delete(participantId);
  }

  #addChat(message) {
    if (!isObject(message) || message.id === undefined || message.id === null) return;
    const key = String(message.id);
    if (this.#seenChat.has(key)) return;
    this.#seenChat.add(key);
    this.#dispatch("chat", {
      message: {
        id: message.id,
        participantId: String(message.participant_id ?? ""),
        displayName: String(message.display_name ?? ""),
        text: String(message.text ?? ""),
        at: String(message.at ?? ""),
        mine: this.#me !== null && String(message.participant_id) === this.#me.participantId,
      },
    });
  }

  // WebRTC ---------------------------------------------------------------------------

  /**
   * Doctor: make sure there is a working connection to `peer`'s page: an ICE restart on
   * the existing connection when it is the same page, a new connection otherwise.
   */
  #connectTo(peer) {
    const participantId = String(peer.participant_id);
    const instance = peer.instance ?? null;
    const existing = this.#links.get(participantId);
    if (existing && !existing.closed && existing.instance === instance) {
      existing.run(() => this.#offer(existing, true));
      return;
    }
    this.#dropLink(participantId);
    const link = this.#createLink(participantId, instance);
    link.addLocalMedia(this.#localStream, true);
    link.run(() => this.#offer(link, false));
  }

  async #offer(link, iceRestart) {
    const pc = link.pc;
    if (pc.signalingState === "have-local-offer") {
      // The previous offer was never answered (the patient was away): replace it.
      await pc.setLocalDescription({ type: "rollback" });
    }
    const offer = await pc.createOffer(iceRestart ? { iceRestart: true } : {});
    await pc.setLocalDescription(offer);
    await this.#sendDescription(link);
  }

  #createLink(participantId, instance) {
    const link = new PeerLink(participantId, instance, { iceServers: this.#iceServers });
    const pc = link.pc;
    pc.onicecandidate = (event) => {
      if (event.candidate && event.candidate.candidate) this.#sendCandidate(link, event.candidate);
    };
    pc.ontrack = (event) => this.#onTrack(link, event);
    pc.onconnectionstatechange = () => this.#onConnectionState(link);
    this.#links.set(participantId, link);
    for (const [key, candidates] of this.#orphanCandidates) {
      if (!key.startsWith(`${participantId}\n`)) continue;
      if (key === `${participantId}\n${instance}`) for (const c of candidates) link.addCandidate(c);
      this.#orphanCandidates.delete(key); // or stale: from a page of that peer since replaced
    }
    this.#updateState();
    return link;
  }

  #dropLink(participantId) {
    const link = this.#links.get(participantId);
    if (!link) return;
    link.close();
    this.#links.delete(participantId);
    this.#dispatch("remote-gone", { participantId });
  }

  #dropAllLinks() {
    for (const participantId of [...this.#links.keys()]) this.#dropLink(participantId);
    for (const timer of this.#lost.values()) clearTimeout(timer);
    this.#lost.clear();
    this.#orphanCandidates.clear();
  }

  #onTrack(link, event) {
    if (link.closed) return;
    let stream = event.streams && event.streams[0];
    if (!stream) {
      // The sender gave no stream id (it sent no tracks of its own): collect them ourselves.
      link.remoteStream ??= new MediaStream();
      link.remoteStream.addTrack(event.track);
      stream = link.remoteStream;
    }
    link.remoteStream = stream;
    this.#dispatch("remote-stream", { participantId: link.participantId, stream });
  }

  #onConnectionState(link) {
    if (link.closed) return;
    const state = link.pc.connectionState;
    clearTimeout(link.disconnectedTimer);
    if (this.role === "doctor") {
      if (state === "failed") {
        this.#restartIce(link);
      } else if (state === "disconnected") {
        link.disconnectedTimer = setTimeout(() => {
          if (link.pc.connectionState === "disconnected") this.#restartIce(link);
        }, DISCONNECTED_RESTART_MS);
      }
    }
    this.#updateState();
  }

  #restartIce(link) {
    // Without signaling the offer cannot travel; the join after reconnecting restarts ICE.
    if (!this.#joined || link.closed) return;
    link.run(() => this.#offer(link, true));
  }

  /** A relayed `signal`: an offer or answer, or an ICE candidate, from another participant. */
  #onSignal(message) {
    if (!isObject(message) || !message.from) return;
    if (!this.#joined || this.#status !== "admitted") {
      // Signals can outrun our own admitted join ack (which brings the ICE servers).
      if (!this.#left && !this.#ended) this.#heldSignals.push(message);
      return;
    }
    const from = String(message.from);
    const instance = message.from_instance ?? null;
    if (isObject(message.description)) this.#onDescription(from, instance, message.description);
    else if (isObject(message.candidate)) this.#onCandidate(from, instance, message.candidate);
  }

  #onDescription(from, instance, description) {
    const { type, sdp } = description;
    if (typeof sdp !== "string") return;
    if (type === "offer" && this.role !== "doctor") {
      let link = this.#links.get(from);
      if (!link || link.closed || link.instance !== instance) {
        this.#dropLink(from);
        link = this.#createLink(from, instance);
      }
      const target = link;
      target.run(() => this.#answer(target, { type, sdp }));
    } else if (type === "answer" && this.role === "doctor") {
      const link = this.#links.get(from);
      if (!link || link.closed || link.instance !== instance) return; // for a connection since replaced
      link.run(async () => {
        if (link.pc.signalingState !== "have-local-offer") return; // a duplicate
        await link.setRemote({ type, sdp });
      });
    }
  }

  async #answer(link, offer) {
    await link.setRemote(offer);
    // After the offer, so our tracks reuse the transceivers it created.
    link.addLocalMedia(this.#localStream, false);
    const answer = await link.pc.createAnswer();
    await link.pc.setLocalDescription(answer);
    await this.#sendDescription(link);
  }

  #onCandidate(from, instance, candidate) {
    if (typeof candidate.candidate !== "string" || !candidate.candidate) return;
    const init = {
      candidate: candidate.candidate,
      sdpMid: candidate.sdpMid ?? null,
      sdpMLineIndex: candidate.sdpMLineIndex ?? null,
      usernameFragment: candidate.usernameFragment ?? null,
    };
    const link = this.#links.get(from);
    if (link && !link.closed && link.instance === instance) {
      link.addCandidate(init);
      return;
    }
    // Relays may overtake each other: keep candidates until the offer makes their connection.
    const key = `${from}\n${instance}`;
    const list = this.#orphanCandidates.get(key) ?? [];
    list.push(init);
    if (list.length > MAX_BUFFERED_CANDIDATES) list.shift();
    this.#orphanCandidates.set(key, list);
  }

  async #sendDescription(link) {
    const description = link.pc.localDescription;
    if (!description || link.closed) return;
    let ack;
    try {
      ack = await this.#request("signal", {
        to: link.participantId,
        description: { type: description.type, sdp: description.sdp },
      });
    } catch {
      return; // Offline: the join after reconnecting renegotiates.
    }
    if (!ack.ok && ack.code !== "unknown_peer") {
      console.warn(`telemed: the server refused our ${description.type}: ${ack.code} ${ack.message}`);
    }
  }

  #sendCandidate(link, candidate) {
    if (link.closed || !this.#joined) return;
    this.#request("signal", {
      to: link.participantId,
      candidate: {
        candidate: candidate.candidate,
        sdpMid: candidate.sdpMid,
        sdpMLineIndex: candidate.sdpMLineIndex,
        usernameFragment: candidate.usernameFragment,
      },
    }).catch(() => {
      // Lost with the connection; an ICE restart follows the reconnect.
    });
  }

  // State ----------------------------------------------------------------------------

  /** @returns {[string, string|null]} */
  #computeState() {
    if (this.#ended) return ["ended", this.#endReason];
    if (this.#failed) return ["idle", "error"];
    if (this.#left) return ["idle", "left"];
    if (!this.#everJoined) return ["idle", this.#serverUnreachable ? "offline" : null];
    if (!this.#connected || !this.#joined) return ["reconnecting", "signaling"];
    if (this.#status !== "admitted") {
      return ["lobby", this.#consultationState === "scheduled" ? "not_started" : null];
    }
    const links = [...this.#links.values()].filter((link) => !link.closed);
    const troubled = links.some((link) =>
      ["disconnected", "failed"].includes(link.pc.connectionState),
    );
    if (this.#lost.size > 0 || troubled) return ["reconnecting", "peer"];
    if (links.some((link) => link.pc.connectionState === "connected")) return ["connected", null];
    if (links.length > 0) return ["connecting", null];
    // Nobody to talk to yet: the doctor waits for a patient; an admitted patient for the offer.
    return this.role === "doctor" ? ["lobby", "no_patient"] : ["connecting", "waiting_offer"];
  }

  #updateState() {
    const [state, reason] = this.#computeState();
    if (state === this.#state.state && reason === this.#state.reason) return;
    this.#state = { state, reason };
    this.#dispatch("state", { state, reason });
  }

  #finish(reason) {
    if (this.#ended) return;
    this.#ended = true;
    this.#endReason = reason ? String(reason) : null;
    this.#clearTimers();
    this.#dropAllLinks();
    stopStream(this.#localStream);
    this.#socket?.disconnect();
    this.#dispatch("ended", { reason: this.#endReason });
    this.#updateState();
  }

  #fail(code, message) {
    if (this.#failed || this.#ended) return;
    this.#failed = true;
    this.#clearTimers();
    this.#dropAllLinks();
    stopStream(this.#localStream);
    this.#socket?.disconnect();
    this.#dispatch("fatal", { code, message });
    this.#updateState();
  }

  #clearTimers() {
    clearTimeout(this.#lobbyPollTimer);
    clearTimeout(this.#joinRetryTimer);
    for (const timer of this.#lost.values()) clearTimeout(timer);
    this.#lost.clear();
  }

  // Plumbing -------------------------------------------------------------------------

  /**
   * Emit with an acknowledgement. Rejects with a LocalFailure when not connected (an
   * emit would be buffered and replayed before the next join) or on timeout.
   */
  #request(event, payload) {
    return new Promise((resolve, reject) => {
      const socket = this.#socket;
      if (!socket || !socket.connected) {
        reject(new LocalFailure("offline", "not connected"));
        return;
      }
      socket.timeout(ACK_TIMEOUT_MS).emit(event, payload, (error, ack) => {
        if (error) reject(new LocalFailure("timeout", `no answer to ${event}`));
        else resolve(isObject(ack) ? ack : { ok: false, code: "bad_ack", message: "malformed answer" });
      });
    });
  }

  /** A user's action: a local failure becomes a notice (server refusals arrive as `error`). */
  async #command(event, payload) {
    try {
      return await this.#request(event, payload);
    } catch (error) {
      const code = error instanceof LocalFailure ? error.code : "timeout";
      // After the end (or a refusal) the socket is closed on purpose: nothing to report.
      if (!this.#ended && !this.#failed) this.#notice(code, error.message, event);
      return { ok: false, code, message: error.message };
    }
  }

  #notice(code, message, event) {
    this.#dispatch("notice", { code, message, event: event ?? null });
  }

  #dispatch(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
