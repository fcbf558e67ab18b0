// The dashboard's connection to the service: the public protocol, nothing private.
//
// First connect: GET /api/sessions checks the token and readiness (a browser cannot read the
// 401 of a refused WebSocket upgrade, it only sees a failed connection), then the socket opens
// with ?snapshot=1&activities=1. Afterwards the stream keeps the last (epoch, seq) of the
// sessions channel and the last seq of the activities channel (its own numbering), and every
// reconnect resumes both: ?since=<seq>&epoch=<epoch>&activities=1&activitiesSince=<seq>.
// A `reset` reloads GET /api/sessions while the socket stays open, buffering live messages
// until the reload lands. On either channel duplicates (seq <= last) are dropped and a gap
// (seq > last + 1) resumes from the last good positions on a fresh socket.
//
// Commands (approvePlan, sendMessage, ...) go over the same socket, each with its own `id`;
// `send` resolves with the server's `result` for that id.
//
// When a socket cannot open, the browser does not say why (the HTTP status of a refused
// upgrade is hidden from pages), so the stream asks GET /api/sessions, which answers the
// same way, and tells four causes apart: the service is unreachable, the token is rejected
// (401), the service is up but waiting for the Jules API (503 `not_ready`, whose body says
// what is wrong upstream and when the service tries again), or another HTTP answer.

export const APP_PROTOCOL = 'control-room.v1';
export const BEARER_PREFIX = 'bearer.';

const BACKOFF_BASE_MS = 1000; // first retry after 0.5-1 s: a restarting server is usually back
const BACKOFF_MAX_MS = 30_000; // an all-day tab retries twice a minute while the server is away
const STABLE_MS = 10_000; // a socket that lived this long was healthy: the backoff starts over
const OFFLINE_AFTER_FAILURES = 4; // ~10 s of failed attempts: call it offline, not a blip
const RETRY_AFTER_DEFAULT_MS = 2000; // the service's own Retry-After before its first poll
const WAITING_MARGIN_MS = 250; // ask a moment after the service's own retry, not during it
const WAITING_JITTER_MS = 500; // a hundred waiting tabs do not ask in the same millisecond
const CLOSE_RESYNC = 4000; // private-use close code (RFC 6455 4000-4999): we saw a gap
// Jules answers a command in well under a second; the service gives up on it after its own
// upstream timeout and retries (~30 s). Past this the page stops waiting and says so.
const COMMAND_TIMEOUT_MS = 45_000;

// RFC 7230 token characters: all a WebSocket subprotocol (and so `bearer.<token>`) may carry.
const SUBPROTOCOL_TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** True when `token` can travel as the `bearer.<token>` subprotocol. */
export function isValidToken(token) {
  return typeof token === 'string' && SUBPROTOCOL_TOKEN.test(token);
}

/** The WebSocket URL of the service that served this page. */
export function socketUrl(location) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/`;
}

/**
 * A self-healing subscription to the delta stream.
 *
 * Handlers: onStatus({state, retryAt, detail, cause, status}), onSnapshot(sessions, position),
 * onDelta(delta, position), onActivity(message), onActivitiesLost(), onUnauthorized().
 * `onActivitiesLost` says that activities may have been missed (a reset, or a fresh snapshot
 * after a refused resume): timelines read earlier may have holes and should be read again.
 * States: connecting, syncing, live, reconnecting, waiting (the service is up; the Jules API
 * is not yet), offline, unauthorized.
 * `cause` says why a wait started: `unreachable` (no answer from the service), `upstream`
 * (503 not_ready: `detail` is the upstream's problem), `http` (another answer: `status`),
 * `lost` (an open socket closed), `refused` (the socket was refused though REST works).
 */
export class Stream {
  #token;
  #handlers;
  #url;
  #ws = null;
  #generation = 0; // bumps on every connect: async work of an older attempt drops its result
  #position = null; // {epoch, seq} of the last applied message; null = need a snapshot
  #refusedOnce = false; // the last upgrade with #position was refused by a serving server
  #activitiesSeq = null; // last applied seq of the activities channel; null = unknown
  #buffer = null; // live messages (deltas and activities) held while a reset's reload runs
  #pending = new Map(); // command id -> {resolve, timer}: commands awaiting their result
  #synced = false; // a snapshot was applied before: a later one may skip activities
  #nextCommandId = 1;
  #attempt = 0;
  #failures = 0;
  #timer = 0;
  #stopped = false;
  #onOnline = () => this.retryNow();
  #onOffline = () => this.#announceWaiting();
  #retryAt = 0;
  #waiting = { cause: '', detail: '', status: 0 };

  /** Counters a test or a curious reader can inspect. */
  stats = {
    duplicates: 0,
    gaps: 0,
    resets: 0,
    reconnects: 0,
    activities: 0,
    activityDuplicates: 0,
    activityGaps: 0,
  };

  #backoffBaseMs;

  /**
   * `backoffBaseMs` defaults to `window.controlRoomOptions.backoffBaseMs` when a page script
   * (in practice, a test's init script) set it, else to the production 1 s.
   */
  constructor(
    token,
    handlers,
    {
      url = socketUrl(window.location),
      backoffBaseMs = window.controlRoomOptions?.backoffBaseMs ?? BACKOFF_BASE_MS,
    } = {},
  ) {
    this.#token = token;
    this.#handlers = handlers;
    this.#url = url;
    this.#backoffBaseMs = backoffBaseMs;
  }

  /** The last applied position, or null before the first snapshot. */
  get position() {
    return this.#position ? { ...this.#position, activitiesSeq: this.#activitiesSeq } : null;
  }

  /** True while a socket is open and caught up: commands sent now reach the service. */
  get connected() {
    return this.#ws !== null && this.#ws.readyState === WebSocket.OPEN;
  }

  /**
   * Send a command (`{type, ...fields}`; the `id` is added here) and wait for its result.
   *
   * Resolves with the server's `{type: "result", id, ok, error?, session?}`, or with a
   * result of the page's own when there is no answer to wait for: `error.code` is
   * `not_connected` (nothing was sent), `connection_lost` (sent, but the socket closed
   * before the answer: it may or may not have happened) or `timeout`. Never rejects.
   */
  send(command) {
    const id = this.#nextCommandId++;
    const ws = this.#ws;
    if (!this.connected) {
      return Promise.resolve(localError(id, 'not_connected'));
    }
    return new Promise((resolve) => {
      const timer = setTimeout(
        () => this.#settle(id, localError(id, 'timeout')),
        COMMAND_TIMEOUT_MS,
      );
      this.#pending.set(id, { resolve, timer });
      try {
        ws.send(JSON.stringify({ ...command, id }));
      } catch {
        this.#settle(id, localError(id, 'not_connected'));
      }
    });
  }

  #settle(id, result) {
    const waiting = this.#pending.get(id);
    if (!waiting) return;
    this.#pending.delete(id);
    clearTimeout(waiting.timer);
    waiting.resolve(result);
  }

  /** The socket is gone: every command still waiting gets `connection_lost`. */
  #abandonCommands() {
    for (const id of [...this.#pending.keys()]) this.#settle(id, localError(id, 'connection_lost'));
  }

  /** Connect now and keep connected until stop(). */
  start() {
    window.addEventListener('online', this.#onOnline);
    window.addEventListener('offline', this.#onOffline);
    this.#connect();
  }

  /** Close for good (token rejected or changed). */
  stop() {
    this.#stopped = true;
    this.#generation += 1;
    clearTimeout(this.#timer);
    window.removeEventListener('online', this.#onOnline);
    window.removeEventListener('offline', this.#onOffline);
    this.#drop();
  }

  /** Skip the rest of the backoff wait. */
  retryNow() {
    if (this.#stopped || this.#ws) return;
    this.#attempt = 0;
    this.#connect();
  }

  #status(state, extra = {}) {
    this.#handlers.onStatus({ state, retryAt: 0, detail: '', cause: '', status: 0, ...extra });
  }

  async #connect() {
    clearTimeout(this.#timer);
    if (this.#stopped) return;
    const generation = ++this.#generation;
    this.#status(this.#position ? 'reconnecting' : 'connecting', { retryAt: 0 });
    let query;
    if (this.#position === null) {
      const probe = await this.#fetchSessions({ wantBody: false });
      if (generation !== this.#generation) return;
      if (probe.kind !== 'ok') return this.#notServing(probe);
      query = '?snapshot=1&activities=1';
    } else {
      const { seq, epoch } = this.#position;
      query = `?since=${seq}&epoch=${encodeURIComponent(epoch)}&activities=1`;
      // Without a known activities position (a service that sent none), the activities
      // channel starts live: what was missed is read over REST when a timeline opens.
      if (this.#activitiesSeq !== null) query += `&activitiesSince=${this.#activitiesSeq}`;
    }
    let ws;
    try {
      ws = new WebSocket(this.#url + query, [APP_PROTOCOL, BEARER_PREFIX + this.#token]);
    } catch {
      // Only a token a subprotocol cannot carry makes the constructor throw here.
      return this.#unauthorized();
    }
    this.#ws = ws;
    let openedAt = 0;
    ws.onopen = () => {
      openedAt = performance.now();
      this.#failures = 0;
      this.#refusedOnce = false;
      // A resume with nothing missed sends no message at all: open means caught up.
      if (this.#position !== null && this.#buffer === null) this.#live();
    };
    ws.onmessage = (event) => this.#message(ws, event.data);
    ws.onclose = () => {
      if (this.#ws !== ws) return;
      this.#ws = null;
      this.#buffer = null;
      this.#abandonCommands();
      if (this.#stopped) return;
      if (openedAt && performance.now() - openedAt > STABLE_MS) this.#attempt = 0;
      if (!openedAt) this.#refused(generation);
      else this.#retryLater({ cause: 'lost', detail: 'connection lost' });
    };
  }

  /** The upgrade failed: find out why over REST, which can read the status. */
  async #refused(generation) {
    const probe = await this.#fetchSessions({ wantBody: false });
    if (generation !== this.#generation || this.#stopped) return;
    if (probe.kind !== 'ok') return this.#notServing(probe);
    // The server is up and takes the token, yet refused the socket. Once, that may have
    // been a 503 not_ready that ended since (a restarted service's first poll): resume
    // again, so what happened meanwhile arrives as a reset or a replay. Twice, it is most
    // likely a 400 for a resume position it does not know: a snapshot is always a valid
    // way back in.
    if (this.#position !== null && !this.#refusedOnce) {
      this.#refusedOnce = true;
      return this.#retryLater({ cause: 'refused', detail: 'connection refused' });
    }
    this.#refusedOnce = false;
    this.#position = null;
    this.#activitiesSeq = null;
    this.#retryLater({ cause: 'refused', detail: 'connection refused' });
  }

  /** GET /api/sessions did not answer 200: say why, and come back when it makes sense. */
  #notServing(probe) {
    if (probe.kind === 'unauthorized') return this.#unauthorized();
    if (probe.kind === 'not_ready') {
      return this.#retryLater({
        cause: 'upstream',
        detail: probe.detail,
        minimumMs: probe.retryAfterMs,
      });
    }
    if (probe.kind === 'error') {
      return this.#retryLater({ cause: 'http', detail: probe.detail, status: probe.status });
    }
    return this.#retryLater({ cause: 'unreachable', detail: 'no answer from the service' });
  }

  #message(ws, data) {
    if (ws !== this.#ws) return;
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return; // not ours to interpret; the protocol only sends JSON
    }
    switch (message.type) {
      case 'snapshot': {
        // A snapshot on a reconnect means a resume was impossible: activities of the time
        // away are not replayed either.
        const lost = this.#synced;
        this.#synced = true;
        this.#position = { epoch: message.epoch, seq: message.seq };
        this.#activitiesSeq = Number.isInteger(message.activitiesSeq)
          ? message.activitiesSeq
          : null;
        this.#handlers.onSnapshot(message.sessions ?? [], this.position);
        if (lost) this.#handlers.onActivitiesLost?.();
        this.#live();
        break;
      }
      case 'reset':
        this.stats.resets += 1;
        this.#reload(ws, message);
        break;
      case 'created':
      case 'updated':
      case 'deleted':
        this.#delta(ws, message);
        break;
      case 'activity':
        this.#activity(ws, message);
        break;
      case 'result':
        this.#settle(message.id, message);
        break;
      default:
        break; // newer server, newer message type: ignore rather than break
    }
  }

  /** An activity: its own channel, its own seq; the same rules as deltas. */
  #activity(ws, message) {
    if (this.#buffer !== null) {
      this.#buffer.push(message);
      return;
    }
    if (this.#position === null) return;
    const last = this.#activitiesSeq;
    if (last !== null && Number.isInteger(message.seq)) {
      if (message.seq <= last) {
        this.stats.activityDuplicates += 1;
        return;
      }
      if (message.seq > last + 1) {
        this.stats.activityGaps += 1;
        this.#resume(ws);
        return;
      }
    }
    if (Number.isInteger(message.seq)) this.#activitiesSeq = message.seq;
    this.stats.activities += 1;
    this.#handlers.onActivity?.(message);
  }

  #delta(ws, delta) {
    if (this.#buffer !== null) {
      this.#buffer.push(delta);
      return;
    }
    const position = this.#position;
    if (position === null) return;
    if (delta.seq <= position.seq) {
      this.stats.duplicates += 1;
      return;
    }
    if (delta.seq > position.seq + 1) {
      this.stats.gaps += 1;
      this.#resume(ws);
      return;
    }
    position.seq = delta.seq;
    this.#handlers.onDelta(delta, this.position);
  }

  /** A gap on this socket: leave it and resume from the last good seq on a new one. */
  #resume(ws) {
    if (ws === this.#ws) this.#drop(CLOSE_RESYNC, 'gap');
    this.#connect();
  }

  /** After `reset`: reload the snapshot over REST; the socket stays, its messages wait. */
  async #reload(ws, reset) {
    this.#position = null;
    this.#buffer = [];
    // What the reset skipped on the activities channel is not replayed: live activities
    // follow from the reset's position, and timelines are read again over REST.
    this.#activitiesSeq = Number.isInteger(reset.activitiesSeq) ? reset.activitiesSeq : null;
    this.#status('syncing', { detail: reset.reason || 'reset' });
    const generation = this.#generation;
    for (;;) {
      const result = await this.#fetchSessions({ wantBody: true });
      if (generation !== this.#generation || ws !== this.#ws || this.#stopped) return;
      if (result.kind === 'unauthorized') return this.#unauthorized();
      if (result.kind === 'not_ready') {
        const retryAt = Date.now() + result.retryAfterMs;
        this.#status('waiting', { retryAt, detail: result.detail, cause: 'upstream' });
        await new Promise((resolve) => setTimeout(resolve, result.retryAfterMs));
        if (generation !== this.#generation || ws !== this.#ws) return;
        this.#status('syncing', { detail: reset.reason || 'reset' });
        continue;
      }
      if (result.kind !== 'ok' || result.body.epoch !== reset.epoch) {
        // Unreachable, or restarted again meanwhile: this socket is stale. Start over.
        this.#drop();
        return this.#retryLater({ cause: 'lost', detail: 'connection lost' });
      }
      const { sessions, seq, epoch } = result.body;
      this.#position = { epoch, seq };
      const held = this.#buffer;
      this.#buffer = null;
      this.#handlers.onSnapshot(sessions ?? [], this.position);
      this.#handlers.onActivitiesLost?.();
      for (const message of held) {
        if (ws !== this.#ws) return; // a gap in the held messages already moved us on
        if (message.type === 'activity') this.#activity(ws, message);
        else this.#delta(ws, message);
      }
      if (ws === this.#ws) this.#live();
      return;
    }
  }

  /**
   * GET /api/sessions: {kind: 'ok', body?}, {kind: 'unauthorized'}, {kind: 'unreachable'},
   * {kind: 'not_ready', detail, retryAfterMs} or {kind: 'error', status, detail}.
   */
  async #fetchSessions({ wantBody }) {
    let response;
    try {
      response = await fetch('/api/sessions', {
        headers: { Authorization: `Bearer ${this.#token}` },
        cache: 'no-store',
      });
    } catch {
      return { kind: 'unreachable' };
    }
    if (response.status === 401) return { kind: 'unauthorized' };
    if (!response.ok) {
      const body = await readError(response);
      if (response.status === 503 && body.error === 'not_ready') {
        return { kind: 'not_ready', ...notReady(body, response.headers.get('Retry-After')) };
      }
      return { kind: 'error', status: response.status, detail: body.message || '' };
    }
    // Unread bodies are dropped with the response (cancelling one shows as a failed request).
    if (!wantBody) return { kind: 'ok' };
    try {
      return { kind: 'ok', body: await response.json() };
    } catch {
      return { kind: 'error', status: response.status, detail: 'the answer is not JSON' };
    }
  }

  #live() {
    this.#failures = 0;
    this.#status('live');
  }

  #unauthorized() {
    this.stop();
    this.#status('unauthorized');
    this.#handlers.onUnauthorized();
  }

  #retryLater({ cause, detail, minimumMs = 0, status = 0 }) {
    if (this.#stopped) return;
    this.stats.reconnects += 1;
    let delay;
    if (cause === 'upstream') {
      // The service answered and said when it tries Jules again: come back just after that,
      // not on a backoff of our own (which would leave the page minutes behind a recovery).
      this.#failures = 0;
      this.#attempt = 0;
      delay = minimumMs + WAITING_MARGIN_MS + Math.random() * WAITING_JITTER_MS;
    } else {
      this.#failures += 1;
      const ceiling = Math.min(BACKOFF_MAX_MS, this.#backoffBaseMs * 2 ** this.#attempt);
      this.#attempt += 1;
      // "Equal jitter": at least half the ceiling (so retries do back off), plus a random half
      // (so a hundred tabs reconnecting after a restart do not arrive in the same millisecond).
      delay = Math.max(minimumMs, ceiling / 2 + Math.random() * (ceiling / 2));
    }
    // The countdown shows the service's own retry time while waiting for Jules.
    this.#retryAt = Date.now() + (cause === 'upstream' ? minimumMs : delay);
    this.#waiting = { cause, detail, status };
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#connect(), delay);
    this.#announceWaiting();
  }

  #announceWaiting() {
    if (this.#stopped || this.#ws || !this.#retryAt) return;
    const { cause, detail, status } = this.#waiting;
    if (cause === 'upstream' && navigator.onLine) {
      this.#status('waiting', { retryAt: this.#retryAt, detail, cause, status });
      return;
    }
    // A service that answers (with an error) is not "offline", however often it fails.
    const unanswered = this.#failures >= OFFLINE_AFTER_FAILURES && cause !== 'http';
    const offline = !navigator.onLine || unanswered;
    this.#status(offline ? 'offline' : 'reconnecting', {
      retryAt: this.#retryAt,
      detail: navigator.onLine ? detail : 'this browser is offline',
      cause: navigator.onLine ? cause : 'offline',
      status,
    });
  }

  #drop(code = 1000, reason = '') {
    const ws = this.#ws;
    this.#ws = null;
    this.#buffer = null;
    this.#abandonCommands();
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    try {
      ws.close(code, reason);
    } catch {
      // already closing
    }
  }
}

/** A result the page makes itself when the service's cannot arrive (see `Stream.send`). */
function localError(id, code) {
  return { type: 'result', id, ok: false, error: { code, message: '' } };
}

/** The JSON error body of a failed response, or {} when it has none. */
async function readError(response) {
  try {
    const body = await response.json();
    return body && typeof body === 'object' ? body : {};
  } catch {
    return {};
  }
}

/**
 * What a 503 `not_ready` says: the upstream's problem and when to ask again.
 *
 * The body is `{"error": "not_ready", "message", "upstream"?: {"reason", "detail",
 * "retryInSeconds", "consecutiveFailures"}}`; services without `upstream` say only
 * `message`. `Retry-After` (seconds) and `retryInSeconds` both tell when the service tries
 * again; the later of the two wins.
 */
function notReady(body, retryAfterHeader) {
  const upstream = body?.upstream && typeof body.upstream === 'object' ? body.upstream : {};
  const message = String(body?.message || 'the first poll has not completed');
  const detail = String(upstream.detail || message.replace(/^waiting for the Jules API: /, ''));
  const header = Number(retryAfterHeader);
  const hinted = Number(upstream.retryInSeconds);
  const seconds = Math.max(header > 0 ? header : 0, hinted > 0 ? hinted : 0);
  return { detail, retryAfterMs: seconds > 0 ? seconds * 1000 : RETRY_AFTER_DEFAULT_MS };
}
