// The dashboard's entry point: where the token comes from, and what the connection looks like.
//
// The token arrives in the URL fragment (`/#token=…`, which browsers never send to a server),
// moves to sessionStorage (this tab only) and leaves the address bar, so it is neither in the
// history nor in a screenshot. Without one, or with a rejected one, a small form asks for it.

import { Stream, isValidToken } from './stream.js';
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

const dashboard = new Dashboard(document);
let stream = null;
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
    },
    onDelta: (delta, position) => dashboard.applyDelta(delta, position),
    onUnauthorized() {
      sessionStorage.removeItem(TOKEN_KEY);
      askForToken(
        'The service rejected this token. Check the LOCAL_TOKEN it runs with ' +
          '(make demo picks a new one every time it starts) and paste it here.',
      );
    },
  });
  // Exposed for the curious (and the browser tests): counters and the current position.
  window.controlRoom = { stream, dashboard };
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
// Pasting a new `/#token=…` link into this tab does not reload the page: pick it up.
window.addEventListener('hashchange', () => {
  if (takeTokenFromFragment()) startFromStorage();
});

takeTokenFromFragment();
startFromStorage();
