// Pure formatting for the dashboard: state labels and tones, relative times, and the one-line
// description of a delta. No DOM and no clock of its own, so every function is predictable.

/** Jules states in lifecycle order: the order of the count chips at the top. */
export const STATE_ORDER = Object.freeze([
  'QUEUED',
  'PLANNING',
  'AWAITING_PLAN_APPROVAL',
  'IN_PROGRESS',
  'AWAITING_USER_FEEDBACK',
  'PAUSED',
  'COMPLETED',
  'FAILED',
]);

// Tone = what the state asks of the reader: nothing (neutral), patience (active),
// action (attention), or a verdict (success, danger). Colours hang off the tone in CSS.
const STATES = {
  QUEUED: { label: 'Queued', tone: 'neutral' },
  PLANNING: { label: 'Planning', tone: 'active' },
  AWAITING_PLAN_APPROVAL: { label: 'Awaiting approval', tone: 'attention' },
  IN_PROGRESS: { label: 'In progress', tone: 'active' },
  AWAITING_USER_FEEDBACK: { label: 'Awaiting feedback', tone: 'attention' },
  PAUSED: { label: 'Paused', tone: 'neutral' },
  COMPLETED: { label: 'Completed', tone: 'success' },
  FAILED: { label: 'Failed', tone: 'danger' },
};

const PLAN_LABELS = {
  pending: 'Pending',
  in_progress: 'In progress',
  succeeded: 'Succeeded',
  failed: 'Failed',
};

/** The reader-facing label and tone of a Jules state; unknown states (the API is alpha) too. */
export function stateInfo(state) {
  const known = STATES[state];
  if (known) return known;
  const words = String(state || 'unknown')
    .toLowerCase()
    .replaceAll('_', ' ');
  return { label: words.charAt(0).toUpperCase() + words.slice(1), tone: 'neutral' };
}

/** True for the states where Jules waits for the person at the keyboard. */
export function needsAttention(state) {
  return stateInfo(state).tone === 'attention';
}

/** The label of a plan status (`pending`, `in_progress`, ...). */
export function planLabel(status) {
  return PLAN_LABELS[status] ?? String(status || '—');
}

// RFC 3339 §5.6: `T`/`t` (or a space, §5.6's note), any number of fraction digits, `Z`/`z`
// or any ±hh:mm offset, a leap second (:60). Date.parse is left out: its reading of
// anything but `YYYY-MM-DDTHH:mm:ss.sssZ` differs between browsers.
const RFC3339 =
  /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))?$/;

/**
 * Milliseconds since the epoch of an RFC 3339 timestamp, NaN if it is not one.
 * Any case of `t`/`z`, any offset, any number of fraction digits (cut to milliseconds);
 * a stamp without an offset is read as UTC.
 */
export function parseTime(stamp) {
  const match = RFC3339.exec(String(stamp ?? '').trim());
  if (!match) return NaN;
  const [, year, month, day, hour, minute, second, fraction = '', , sign, offH = 0, offM = 0] =
    match;
  const inRange = month >= 1 && month <= 12 && day >= 1 && day <= 31 && hour <= 23 && minute <= 59;
  if (!inRange || second > 60 || offH > 23 || offM > 59) return NaN;
  const ms = Number(fraction.slice(0, 3).padEnd(3, '0'));
  const utc = Date.UTC(+year, month - 1, +day, +hour, +minute, +second, ms);
  const offset = sign ? (sign === '-' ? -1 : 1) * (offH * 60 + +offM) * 60_000 : 0;
  return utc - offset;
}

/** "just now", "3 s ago", "5 min ago", "2 h ago", "4 d ago"; clocks a little ahead count as now. */
export function relativeTime(ms, now) {
  if (!Number.isFinite(ms)) return '—';
  const seconds = Math.floor((now - ms) / 1000);
  if (seconds < 1) return 'just now';
  if (seconds < 60) return `${seconds} s ago`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.floor(minutes / 60);
  if (hours < 24) return `${hours} h ago`;
  return `${Math.floor(hours / 24)} d ago`;
}

// Built once: `Date.prototype.toLocaleString` builds a formatter per call, 0.1-0.5 ms each.
const ABSOLUTE = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });

/** A local, absolute rendering of a time, for tooltips. */
export function absoluteTime(ms) {
  if (!Number.isFinite(ms)) return '';
  return ABSOLUTE.format(ms);
}

/** `#123` for a GitHub pull request URL, else "PR". */
export function pullRequestLabel(url) {
  const match = /\/pull\/(\d+)/.exec(url || '');
  return match ? `#${match[1]}` : 'PR';
}

/** What changed in a delta, in a few words: "PLANNING → AWAITING_PLAN_APPROVAL", "created". */
export function describeDelta(delta) {
  const { before, after } = delta;
  if (delta.type === 'created') return after ? `created · ${after.state}` : 'created';
  if (delta.type === 'deleted') return before ? `deleted · was ${before.state}` : 'deleted';
  if (!before || !after) return 'updated';
  if (before.state !== after.state) return `${before.state} → ${after.state}`;
  const parts = [];
  if (!before.pullRequest && after.pullRequest) parts.push('pull request opened');
  else if (before.pullRequest?.url !== after.pullRequest?.url) parts.push('pull request changed');
  if (before.approval?.state !== after.approval?.state) {
    parts.push(`approval ${after.approval?.state ?? 'cleared'}`);
  }
  if (before.title !== after.title) parts.push('renamed');
  if (before.branch !== after.branch) parts.push('branch changed');
  if (before.planStatus !== after.planStatus) parts.push(`plan ${planLabel(after.planStatus)}`);
  return parts.length ? parts.join(', ') : 'updated';
}

/** The tone of a delta in the feed: the tone of the state it ends in. */
export function deltaTone(delta) {
  if (delta.type === 'deleted') return 'neutral';
  return stateInfo(delta.after?.state).tone;
}

/** `acme/web-app` → ["acme/", "web-app"], so the owner can be drawn quieter than the name. */
export function splitRepository(repository) {
  const repo = String(repository || '');
  const slash = repo.lastIndexOf('/');
  return slash < 0 ? ['', repo] : [repo.slice(0, slash + 1), repo.slice(slash + 1)];
}

/** True for the states a session ends in: only these can be archived or deleted. */
export function isFinished(state) {
  return state === 'COMPLETED' || state === 'FAILED';
}

/** "45 s", "23 min", "2 h 5 min", "3 d": how long, for durations people wait through. */
export function duration(ms) {
  if (!Number.isFinite(ms) || ms < 0) return '';
  const seconds = Math.floor(ms / 1000);
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min`;
  const hours = Math.floor(minutes / 60);
  if (hours < 24) return minutes % 60 ? `${hours} h ${minutes % 60} min` : `${hours} h`;
  return `${Math.floor(hours / 24)} d`;
}

/** "no activity for 23 min" for a session flagged stalled since `stalledSince`; '' if not. */
export function stallText(stalledSince, now) {
  const since = parseTime(stalledSince);
  if (!Number.isFinite(since)) return '';
  return `no activity for ${duration(Math.max(0, now - since))}`;
}

/** "12 KB", "3.4 MB": a size in bytes for people. */
export function formatBytes(size) {
  const n = Number(size);
  if (!Number.isFinite(n) || n < 0) return '';
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${Math.round(n / 1024)} KB`;
  return `${(n / (1024 * 1024)).toFixed(1)} MB`;
}

// What each command failure means for the person who clicked, by the result's error code
// (the protocol's codes, and the page's own: not_connected, connection_lost, timeout).
const COMMAND_ERRORS = {
  failed_precondition: 'Jules refused: the session is not in a state that allows this any more.',
  forbidden: 'This token is read-only: it can watch sessions but not act on them.',
  upstream_unavailable: 'Jules did not answer, so nothing changed. Try again in a moment.',
  rate_limited: 'Too many commands at once. Wait a moment and try again.',
  not_found: 'Jules does not know this session any more (it may have been deleted).',
  invalid_argument: 'Jules refused the request as invalid.',
  bad_message: 'The control room could not read the request (a bug in this page).',
  unknown_type: 'This control room does not know that command (is it an older version?).',
  internal: 'The control room hit a bug while doing this.',
  not_connected: 'Not connected to the control room: nothing was sent. Try again once it is live.',
  connection_lost:
    'The connection dropped before Jules answered: it may or may not have happened. ' +
    'Check the session before trying again.',
  timeout: 'No answer after 45 s: it may or may not have happened. Check the session.',
};

/** A sentence for a failed command's `error` ({code, message}); the service's detail after. */
export function commandError(error) {
  const code = error?.code ?? 'internal';
  const known = COMMAND_ERRORS[code] ?? `The command failed (${code}).`;
  const detail = String(error?.message ?? '').trim();
  return detail ? `${known} (${detail})` : known;
}
