// Sessions' timelines: activities from two sources, kept as one ordered, duplicate-free list.
//
// A timeline is read whole over REST (GET /api/sessions/{id}/activities) when someone needs
// it (a detail opens, a session needs you), and live `activity` messages are added as they
// arrive, before, during or after that read: activities are keyed by id, so each is kept
// once whichever way it came, and ordered by when it happened. After the stream says
// activities may have been missed (a reset), every timeline is marked incomplete and the
// ones in use are read again. No DOM here: views subscribe with `onChange`.

import { parseTime } from './format.js';

// Sessions whose timelines are kept (the least recently used unwatched ones go first): a
// day-long tab on a busy account sees activities of hundreds of sessions it never opens.
const TIMELINES_MAX = 200;
// One session's activities kept in memory; a real one has tens to hundreds.
const ACTIVITIES_PER_TIMELINE_MAX = 5000;
// Timelines read at once: a "Needs you" list of 30 sessions does not fire 30 requests.
const LOADS_IN_FLIGHT_MAX = 3;
// A timeline read just after a session began can be empty although the session already
// waits on its plan (Jules answers 404 for its activities for a moment, which reads as
// "none yet"). Such a timeline is read again after 1, 2 and 4 s, then left to live updates.
const REREAD_DELAYS_MS = [1000, 2000, 4000];
const PENDING_RETRY_MS = 1000; // the server's Retry-After for a pending timeline

function newEntry(sessionId) {
  return {
    sessionId,
    byId: new Map(),
    list: [], // oldest first
    complete: false, // read whole over REST since activities were last possibly lost
    loading: false,
    error: null, // {code, message, status} of the last failed read
    truncated: false,
    generation: 0, // bumped when activities may have been lost: an older read is not whole
    rereads: 0, // rereads asked by `expect` so far
    rereadTimer: 0,
  };
}

function when(activity) {
  const ms = parseTime(activity.createdAt);
  return Number.isFinite(ms) ? ms : 0;
}

function before(a, b) {
  const ta = when(a);
  const tb = when(b);
  if (ta !== tb) return ta < tb;
  return String(a.id) < String(b.id);
}

/** The latest `planGenerated` activity of a list (oldest first), or null. */
export function latestPlan(list) {
  for (let i = list.length - 1; i >= 0; i -= 1) {
    if (list[i].kind === 'planGenerated' && list[i].plan) return list[i];
  }
  return null;
}

/** The agent's latest message (the question it waits on, when it waits), or null. */
export function lastAgentMessage(list) {
  for (let i = list.length - 1; i >= 0; i -= 1) {
    if (list[i].kind === 'agentMessaged' && list[i].message) return list[i];
  }
  return null;
}

/** Timelines of many sessions, fed by REST reads and live activities. */
export class Timelines {
  #api;
  #entries = new Map(); // sessionId -> entry; insertion order is recency of use
  #watched = new Map(); // sessionId -> number of watchers
  #listeners = new Set();
  #queue = []; // sessionIds waiting for a read slot
  #inFlight = 0;

  constructor(api) {
    this.#api = api;
  }

  /** Call `listener(sessionId)` whenever that session's timeline changes. */
  onChange(listener) {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** The timeline of a session ({list, complete, loading, error, truncated}), or null. */
  get(sessionId) {
    return this.#entries.get(sessionId) ?? null;
  }

  /** Add one live activity (a duplicate of one already held is ignored). */
  add(activity) {
    if (!activity || activity.id == null || !activity.sessionId) return;
    const entry = this.#entry(activity.sessionId);
    if (this.#insert(entry, activity)) this.#changed(entry.sessionId);
  }

  /** Keep this session's timeline whole (read it now if needed) until `unwatch`. */
  watch(sessionId) {
    this.#watched.set(sessionId, (this.#watched.get(sessionId) ?? 0) + 1);
    this.ensure(sessionId, { retry: true }); // a new reader tries again after a failure
  }

  unwatch(sessionId) {
    const n = (this.#watched.get(sessionId) ?? 0) - 1;
    if (n > 0) this.#watched.set(sessionId, n);
    else this.#watched.delete(sessionId);
  }

  /** Read the session's timeline over REST unless it is whole or being read. */
  ensure(sessionId, { retry = false } = {}) {
    const entry = this.#entry(sessionId);
    if (entry.complete || entry.loading || (entry.error && !retry)) return;
    entry.loading = true;
    entry.error = null;
    this.#queue.push(sessionId);
    this.#changed(sessionId);
    this.#pump();
  }

  /**
   * The session's state says an activity of `kind` must exist (a plan while it awaits
   * approval, a question while it awaits an answer): if a whole read found none, read
   * again a little later, a few times at most.
   */
  expect(sessionId, kind) {
    const entry = this.#entries.get(sessionId);
    if (!entry || !entry.complete || entry.rereadTimer) return;
    if (entry.list.some((activity) => activity.kind === kind)) return;
    const delay = REREAD_DELAYS_MS[entry.rereads];
    if (delay === undefined) return;
    entry.rereads += 1;
    entry.rereadTimer = setTimeout(() => {
      entry.rereadTimer = 0;
      if (this.#entries.get(sessionId) !== entry || entry.list.some((a) => a.kind === kind)) return;
      entry.complete = false;
      this.ensure(sessionId, { retry: true });
    }, delay);
  }

  /** Activities may have been missed: nothing held is whole any more; reread what is used. */
  invalidate() {
    for (const entry of this.#entries.values()) {
      entry.complete = false;
      entry.error = null;
      entry.generation += 1;
    }
    for (const sessionId of this.#watched.keys()) this.ensure(sessionId);
  }

  /** Forget a session (it was deleted). */
  forget(sessionId) {
    this.#entries.delete(sessionId);
  }

  #entry(sessionId) {
    let entry = this.#entries.get(sessionId);
    if (entry) {
      this.#entries.delete(sessionId); // re-inserted last: most recently used
    } else {
      entry = newEntry(sessionId);
      this.#evict();
    }
    this.#entries.set(sessionId, entry);
    return entry;
  }

  #evict() {
    if (this.#entries.size < TIMELINES_MAX) return;
    for (const [sessionId, entry] of this.#entries) {
      if (this.#entries.size < TIMELINES_MAX) return;
      if (!this.#watched.has(sessionId) && !entry.loading) this.#entries.delete(sessionId);
    }
  }

  /** Insert in time order; false for a duplicate. Live activities almost always go last. */
  #insert(entry, activity) {
    const key = String(activity.id);
    if (entry.byId.has(key)) return false;
    entry.byId.set(key, activity);
    const list = entry.list;
    let i = list.length;
    while (i > 0 && before(activity, list[i - 1])) i -= 1;
    list.splice(i, 0, activity);
    if (list.length > ACTIVITIES_PER_TIMELINE_MAX) {
      const dropped = list.shift();
      entry.byId.delete(String(dropped.id));
      entry.truncated = true;
    }
    return true;
  }

  #pump() {
    while (this.#inFlight < LOADS_IN_FLIGHT_MAX && this.#queue.length) {
      const sessionId = this.#queue.shift();
      this.#inFlight += 1;
      this.#load(sessionId).finally(() => {
        this.#inFlight -= 1;
        this.#pump();
      });
    }
  }

  async #load(sessionId) {
    const generation = this.#entries.get(sessionId)?.generation ?? 0;
    const answer = await this.#api.activities(sessionId);
    // Looked up again: the entry may have been evicted or forgotten meanwhile.
    const entry = this.#entries.get(sessionId);
    if (!entry) return;
    entry.loading = false;
    if (!answer.ok) {
      entry.error = { code: answer.code, message: answer.message, status: answer.status };
      this.#changed(sessionId);
      return;
    }
    if (answer.body.pending) {
      // Jules has no timeline for a session just created: empty for now, not for good.
      setTimeout(() => this.ensure(sessionId, { retry: true }), PENDING_RETRY_MS);
      return;
    }
    for (const activity of answer.body.activities) {
      if (activity && activity.id != null) this.#insert(entry, { sessionId, ...activity });
    }
    entry.truncated = entry.truncated || answer.body.truncated;
    if (entry.generation === generation) {
      entry.complete = true;
    } else if (this.#watched.has(sessionId)) {
      this.ensure(sessionId); // activities were lost while this read ran: read again
    }
    this.#changed(sessionId);
  }

  #changed(sessionId) {
    for (const listener of this.#listeners) listener(sessionId);
  }
}
