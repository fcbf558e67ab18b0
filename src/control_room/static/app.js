// The dashboard's entry point: where the token comes from, what the connection looks like,
// and how the parts of the page are wired to the stream.
//
// The token arrives in the URL fragment (`/#token=…`, which browsers never send to a server),
// moves to sessionStorage (this tab only) and leaves the address bar, so it is neither in the
// history nor in a screenshot. Without one, or with a rejected one, a small form asks for it.
// `#session=<id>` in the fragment opens that session's detail (links to it can be shared).

import { Api } from './api.js';
import { Archived } from './archived.js';
import { Compose } from './compose.js';
import { SessionDetail } from './detail.js';
import { NeedsYou } from './needs.js';
import { Alerts } from './notify.js';
import { Stream, isValidToken } from './stream.js';
import { Timelines } from './timeline.js';
import { Dashboard } from './view.js';

const TOKEN_KEY = 'control-room.token';
const COUNTDOWN_TICK_MS = 250; // fine enough that "in 3 s" never lags a visible second

const $ = (id) => document.getElementById(id);
const panel = $('token-panel');
const form = $('token-form');
const input = $('token-input');
const tokenError = $('token-error');
const connection = $('connection');
const connectionText = $('connection-text');
const banner = $('connection-banner');
const bannerText = $('connection-message');
const bannerCountdown = $('connection-banner-countdown');
const retryButton = $('retry');
const changeTokenButton = $('change-token');

const api = new Api();
// Commands go to whichever stream is current; without one, nothing is sent and the caller
// is told so (the same answer a closed socket gives).
const commands = {
  send: (command) =>
    stream
      ? stream.send(command)
      : Promise.resolve({ type: 'result', ok: false, error: { code: 'not_connected' } }),
};
const dashboard = new Dashboard(document);
const timelines = new Timelines(api);
const alerts = new Alerts($('notify'), { onOpen: openSession });
const needs = new NeedsYou(document, { timelines, commands, alerts });
const detail = new SessionDetail(document, {
  sessions: dashboard,
  timelines,
  api,
  commands,
  onDone: (text) => dashboard.note(text),
});
const compose = new Compose(document, {
  api,
  commands,
  onCreated: (session) => detail.open(session.id, { hint: session }),
});
const archived = new Archived(document, {
  api,
  commands,
  onUnarchived: (text) => dashboard.note(text),
});
dashboard.onOpen = openSession;
let stream = null;
let me = null; // GET /api/me of the current token: {readOnly, commands}; null until known
let meLoading = false;
let synced = false; // the current stream delivered its first snapshot
let pendingOpen = null; // a session named in the fragment before the sessions were known
const IDLE = Object.freeze({ state: 'idle', retryAt: 0, detail: '', cause: '', status: 0 });
let status = IDLE;
let countdownTimer = 0;
let snapshots = 0;
let lastEpoch = null;
let interrupted = false;

/** Move a `#token=…` from the address bar into sessionStorage; true when one was there. */
function takeTokenFromFragment() {
  // Parsed by hand: URLSearchParams would turn a `+` (legal in a token) into a space.
  const parts = window.location.hash.slice(1).split('&');
  const index = parts.findIndex((part) => part.startsWith('token='));
  if (index < 0) return false;
  const raw = parts[index].slice('token='.length);
  parts.splice(index, 1);
  let token = raw;
  try {
    token = decodeURIComponent(raw);
  } catch {
    // a stray `%`: take the token exactly as written
  }
  const rest = parts.filter(Boolean).join('&');
  const { pathname, search } = window.location;
  window.history.replaceState(
    window.history.state,
    '',
    pathname + search + (rest ? `#${rest}` : ''),
  );
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  return Boolean(token);
}

/** The session id in `#session=<id>`, or null. */
function sessionFromFragment() {
  const part = window.location.hash
    .slice(1)
    .split('&')
    .find((p) => p.startsWith('session='));
  if (!part) return null;
  try {
    return decodeURIComponent(part.slice('session='.length)) || null;
  } catch {
    return null;
  }
}

/** Open a session's detail through the fragment, so Back and shared links work too. */
function openSession(sessionId) {
  const target = `#session=${encodeURIComponent(sessionId)}`;
  if (window.location.hash === target) route();
  else window.location.hash = target;
}

/** Follow the fragment: open the detail it names (once the sessions are known). */
function route() {
  const sessionId = sessionFromFragment();
  if (!sessionId) {
    detail.close();
    return;
  }
  if (synced) detail.open(sessionId);
  else pendingOpen = sessionId;
}

/**
 * Show controls only to a token that may use them: hidden until GET /api/me says so, so a
 * read-only viewer never sees a button flash that would only be refused.
 */
function setControls(enabled, readOnly) {
  document.body.dataset.controls = enabled ? 'on' : 'off';
  $('read-only').hidden = !readOnly;
  $('new-session').hidden = !enabled;
  needs.setControls(enabled);
  detail.setControls(enabled);
  if (!enabled) compose.close();
}

async function loadMe() {
  if (me !== null || meLoading) return;
  meLoading = true;
  const token = api.token;
  const answer = await api.me();
  meLoading = false;
  if (token !== api.token) return loadMe(); // the token changed meanwhile: ask for the new one
  if (!answer.ok) return; // asked again with the next snapshot
  me = answer.body;
  setControls(me.commands !== false && !me.readOnly, Boolean(me.readOnly));
}

function secondsLeft(retryAt) {
  return retryAt ? Math.max(0, Math.ceil((retryAt - Date.now()) / 1000)) : 0;
}

function statusText({ state, retryAt }) {
  const seconds = secondsLeft(retryAt);
  switch (state) {
    case 'live':
      return ['Live', ''];
    case 'syncing':
      return ['Syncing…', ''];
    case 'waiting': // the banner below says why and counts down
      return ['Waiting for Jules', ''];
    case 'reconnecting':
      return retryAt ? ['Reconnecting', `in ${seconds} s`] : ['Reconnecting…', ''];
    case 'offline':
      return ['Offline', retryAt ? `retrying in ${seconds} s` : ''];
    case 'unauthorized':
      return ['Token rejected', ''];
    case 'idle':
      return ['Not connected', ''];
    default:
      return ['Connecting…', ''];
  }
}

/**
 * The sentence under the top bar that says why the page is not live, or '' when the pill
 * says enough. What the service knows beats a generic "reconnecting": a service that is up
 * but cannot reach Jules must not look like a service that is down.
 */
function bannerMessage({ state, cause, detail, status: httpStatus }) {
  if (state === 'waiting') {
    return `Connected to the control room; waiting for the Jules API: ${detail}`;
  }
  if (state !== 'reconnecting' && state !== 'offline') return '';
  if (cause === 'offline') return 'This browser is offline';
  if (cause === 'unreachable') {
    return `Cannot reach the control room at ${window.location.host}: is it running?`;
  }
  if (cause === 'http') {
    const why = detail ? `: ${detail}` : '';
    return `The control room answered HTTP ${httpStatus}${why}`;
  }
  return '';
}

function drawStatus() {
  const [text, countdown] = statusText(status);
  connection.dataset.state = status.state;
  if (connectionText.textContent !== text) connectionText.textContent = text;
  const countdownEl = $('connection-countdown');
  if (countdownEl.textContent !== countdown) countdownEl.textContent = countdown;
  connection.title = status.detail ? `${text} (${status.detail})` : text;
  const message = bannerMessage(status);
  banner.hidden = !message;
  banner.dataset.cause = status.state === 'waiting' ? 'upstream' : status.cause;
  if (bannerText.textContent !== message) bannerText.textContent = message;
  const seconds = secondsLeft(status.retryAt);
  let retry = '';
  if (message && status.retryAt) retry = seconds ? `, retrying in ${seconds} s` : ', retrying now';
  if (bannerCountdown.textContent !== retry) bannerCountdown.textContent = retry;
}

function showStatus(next) {
  const wasLive = status.state === 'live';
  status = next;
  clearInterval(countdownTimer);
  if (next.retryAt) countdownTimer = setInterval(drawStatus, COUNTDOWN_TICK_MS);
  drawStatus();
  const waiting =
    (next.state === 'reconnecting' || next.state === 'offline' || next.state === 'waiting') &&
    next.retryAt;
  retryButton.hidden = !waiting;
  dashboard.setStale(next.state !== 'live');
  if (wasLive && next.state !== 'live') interrupted = true;
  if (next.state === 'live' && interrupted) {
    interrupted = false;
    dashboard.note('Reconnected; caught up on what was missed');
  }
}

function askForToken(message) {
  stream?.stop();
  archived.close(); // what it shows was read with the token being replaced
  stream = null;
  panel.hidden = false;
  tokenError.hidden = !message;
  tokenError.textContent = message || '';
  changeTokenButton.hidden = true;
  retryButton.hidden = true;
  input.value = '';
  input.setAttribute('aria-invalid', message ? 'true' : 'false');
  input.focus();
}

function start(token) {
  stream?.stop();
  panel.hidden = true;
  tokenError.hidden = true;
  changeTokenButton.hidden = false;
  snapshots = 0;
  interrupted = false;
  synced = false;
  me = null;
  setControls(false, false);
  api.token = token;
  stream = new Stream(token, {
    onStatus: showStatus,
    onSnapshot(sessions, position) {
      snapshots += 1;
      if (snapshots > 1 || (lastEpoch !== null && lastEpoch !== position.epoch)) {
        const why = lastEpoch !== position.epoch ? 'the service restarted' : 'too much was missed';
        dashboard.note(`Reloaded ${sessions.length.toLocaleString()} sessions: ${why}`);
        interrupted = false;
      }
      lastEpoch = position.epoch;
      dashboard.replaceAll(sessions, position);
      needs.replaceAll(sessions, { initial: snapshots === 1 });
      detail.refresh();
      synced = true;
      loadMe();
      if (pendingOpen !== null && pendingOpen === sessionFromFragment()) detail.open(pendingOpen);
      pendingOpen = null;
    },
    onDelta(delta, position) {
      dashboard.applyDelta(delta, position);
      needs.update(delta.sessionId, delta.type === 'deleted' ? null : (delta.after ?? null));
      detail.sessionChanged(delta.sessionId);
    },
    onActivity: (message) => timelines.add({ ...message.activity, sessionId: message.sessionId }),
    onActivitiesLost: () => timelines.invalidate(),
    onUnauthorized() {
      sessionStorage.removeItem(TOKEN_KEY);
      askForToken(
        'The service rejected this token. Check the LOCAL_TOKEN it runs with ' +
          '(make demo picks a new one every time it starts) and paste it here.',
      );
    },
  });
  // Exposed for the curious (and the browser tests): counters and the current position.
  window.controlRoom = { stream, dashboard, timelines, needs, alerts, detail, archived };
  stream.start();
}

function startFromStorage() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) {
    showStatus(IDLE);
    askForToken('');
  } else if (!isValidToken(token)) {
    sessionStorage.removeItem(TOKEN_KEY);
    askForToken('That token has characters a token cannot contain. Paste it again.');
  } else {
    start(token);
  }
}

form.addEventListener('submit', (event) => {
  event.preventDefault();
  const token = input.value.trim();
  if (!token) {
    askForToken('Enter the access token first.');
    return;
  }
  if (!isValidToken(token)) {
    askForToken(
      "That is not a valid token: only letters, digits and ! # $ % & ' * + - . ^ _ ` | ~ are allowed.",
    );
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  input.value = '';
  start(token);
});

retryButton.addEventListener('click', () => stream?.retryNow());
changeTokenButton.addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  showStatus(IDLE);
  askForToken('');
});
$('new-session').addEventListener('click', () => compose.open());
$('archived-open').addEventListener('click', () => archived.open());
// Pasting a new `/#token=…` link into this tab does not reload the page: pick it up.
window.addEventListener('hashchange', () => {
  if (takeTokenFromFragment()) startFromStorage();
  route();
});

takeTokenFromFragment();
startFromStorage();
route();
