// The dashboard's DOM: sessions table, counts per state, filters, and the feed of changes.
//
// Incoming data only touches plain maps and marks ids dirty; one requestAnimationFrame
// callback then writes the DOM for everything that changed since the last frame. A burst of
// 500 deltas is therefore one DOM pass, and a session changed five times in a frame is drawn
// once. Rows are keyed by session id and updated cell by cell, so the reader's place (focus,
// selection, scroll) survives live updates.

import {
  STATE_ORDER,
  absoluteTime,
  deltaTone,
  describeDelta,
  needsAttention,
  parseTime,
  planLabel,
  pullRequestLabel,
  relativeTime,
  splitRepository,
  stallText,
  stateInfo,
} from './format.js';
import { el, externalLink, sessionHref } from './dom.js';

const FEED_MAX = 50; // the feed is a glance at the last minutes, not a log; /api/deltas is
const LEAVE_MS = 450; // matches the `leave` animation in style.css
const ANIMATED_LEAVES_MAX = 20; // past this many deletions in a frame, skip the fade: just go
const ROWS_PER_FRAME_MAX = 200; // ~50 ms of DOM work on a slow machine; bigger bursts take turns
const FLASH_ROWS_MAX = 40; // more than a screenful; past that a highlight is noise, and costs frames
const CLOCK_TICK_MS = 1000; // "3 s ago" must move every second to be believable
const FILTERS_KEY = 'control-room.view'; // filters and sort survive a reload of the tab

// Cells of a row, in column order; each knows how to draw itself and what makes it change.
// The repository cell also carries the branch, on a second line.
const FIELDS = [
  'repository',
  'title',
  'state',
  'planStatus',
  'approval',
  'updatedAt',
  'pullRequest',
];

const fingerprint = {
  repository: (s) => `${s.repository}\u0000${s.branch}`,
  title: (s) => s.title,
  state: (s) => `${s.state}\u0000${s.stalledSince ?? ''}`,
  planStatus: (s) => s.planStatus,
  approval: (s) => `${s.approval?.state}\u0000${s.approval?.approvedAt ?? ''}`,
  updatedAt: (s) => s.updatedAt,
  pullRequest: (s) => (s.pullRequest ? `${s.pullRequest.url}\u0000${s.pullRequest.title}` : ''),
};

// Changes to these are not "news" worth a highlight: every update moves the time.
const QUIET_FIELDS = new Set(['updatedAt']);

const draw = {
  repository(cell, s) {
    const [owner, name] = splitRepository(s.repository);
    cell.replaceChildren(
      el(
        'span',
        { class: 'repo', 'data-field': 'repository-name' },
        el('span', { class: 'owner', text: owner }),
        name || '—',
      ),
      el('span', { class: 'branch', 'data-field': 'branch', text: s.branch || '—' }),
    );
    cell.title = s.branch ? `${s.repository} · ${s.branch}` : s.repository;
  },
  title(cell, s) {
    // The title opens the session's detail (its plan, messages, controls); the detail links
    // to Jules. A real link: keyboard, middle click and "copy link" all work.
    const link = el('a', { href: sessionHref(s.id), text: s.title || `Session ${s.id}` });
    link.title = 'Show the plan, messages and controls of this session';
    cell.replaceChildren(link);
  },
  state(cell, s, record) {
    const { label, tone } = stateInfo(s.state);
    const badge = cell.firstElementChild ?? cell.appendChild(el('span'));
    badge.className = `badge tone-${tone}`;
    badge.textContent = label;
    cell.dataset.value = s.state;
    cell.title = s.state;
    // A session that works but has said nothing for a while: flagged under its state, and
    // the clock keeps the "for 23 min" current.
    let stall = cell.querySelector('.stall');
    if (s.stalledSince) {
      stall ??= cell.appendChild(el('span', { class: 'stall', 'data-testid': 'stalled' }));
      stall.title = `Stalled: no new activity since ${absoluteTime(parseTime(s.stalledSince))}`;
      record.stallText = '';
    } else {
      stall?.remove();
    }
    cell.classList.toggle('stalled', Boolean(s.stalledSince));
  },
  planStatus(cell, s) {
    cell.replaceChildren(el('span', { text: planLabel(s.planStatus) }));
    cell.dataset.value = s.planStatus;
  },
  approval(cell, s) {
    const approved = s.approval?.state === 'approved';
    cell.replaceChildren(
      el('span', {
        class: approved ? 'approval approved' : 'approval',
        text: approved ? 'Approved' : 'Pending',
      }),
    );
    cell.dataset.value = s.approval?.state ?? '';
    const at = parseTime(s.approval?.approvedAt);
    cell.title = Number.isFinite(at) ? `Approved ${absoluteTime(at)}` : '';
  },
  updatedAt(cell, s, record) {
    const time = cell.firstElementChild ?? cell.appendChild(el('time'));
    time.dateTime = s.updatedAt;
    time.title = absoluteTime(record.updatedMs);
    record.timeText = ''; // forces the clock to fill it in
  },
  pullRequest(cell, s) {
    const pr = s.pullRequest;
    cell.replaceChildren(
      pr ? externalLink(pr.url, pullRequestLabel(pr.url), pr.title || pr.url) : '',
    );
  },
};

function loadPreferences() {
  try {
    const saved = JSON.parse(localStorage.getItem(FILTERS_KEY) || '{}');
    return {
      repo: typeof saved.repo === 'string' ? saved.repo : '',
      state: typeof saved.state === 'string' ? saved.state : '',
      text: typeof saved.text === 'string' ? saved.text : '',
      newestFirst: saved.newestFirst !== false,
    };
  } catch {
    return { repo: '', state: '', text: '', newestFirst: true };
  }
}

/** The dashboard's DOM, fed with snapshots and deltas, drawn once per animation frame. */
export class Dashboard {
  constructor(doc = document) {
    const $ = (id) => doc.getElementById(id);
    this.root = $('dashboard');
    this.body = $('sessions-body');
    this.counts = $('state-counts');
    this.repoSelect = $('filter-repo');
    this.textInput = $('filter-text');
    this.sortButton = $('sort-updated');
    this.sortHeader = $('th-updated');
    this.showing = $('showing');
    this.empty = $('empty');
    this.feedList = $('feed');
    this.feedEmpty = $('feed-empty');
    this.positionText = $('position');

    this.records = new Map(); // id -> {session, updatedMs, row?, cells?, timeText, shown}
    this.dirty = new Set(); // ids whose data changed since the last frame
    this.flashes = []; // [record, cells or null for the whole row] drawn this frame
    this.feedQueue = []; // deltas not yet in the feed
    this.feedItems = []; // [{li, time, ms}] newest first
    this.structureDirty = true; // order, visibility, counts or filter options need work
    this.frame = 0;
    this.position = null;
    this.prefs = loadPreferences();
    this.repoOptions = '';
    this.chips = new Map(); // state ('' = all) -> {button, count}
    this.chipStates = '';
    this.lastFrameStats = { ms: 0, dirty: 0 };
    this.drawnOnce = false;
    this.onOpen = null; // (sessionId) => void: a row was clicked

    this.#wire();
    this.#syncSortHeader();
    setInterval(() => this.#tick(), CLOCK_TICK_MS);
  }

  /** Replace everything with a full snapshot (first connect, or after a reset). */
  replaceAll(sessions, position) {
    const seen = new Set();
    for (const session of sessions) {
      seen.add(session.id);
      this.#put(session);
    }
    for (const id of this.records.keys()) {
      if (!seen.has(id)) this.#remove(id);
    }
    this.position = position;
    this.root.hidden = false;
    this.#schedule();
  }

  /** Apply one delta from the stream. */
  applyDelta(delta, position) {
    if (delta.type === 'deleted') this.#remove(delta.sessionId);
    else if (delta.after) this.#put(delta.after);
    this.feedQueue.push(delta);
    if (this.feedQueue.length > FEED_MAX)
      this.feedQueue.splice(0, this.feedQueue.length - FEED_MAX);
    this.position = position;
    this.#schedule();
  }

  /** A line in the feed about the connection itself ("reloaded after a server restart"). */
  note(text) {
    this.feedQueue.push({ type: 'note', text, timestamp: new Date().toISOString() });
    this.#schedule();
  }

  /** The session with this id as last received, or null. */
  session(id) {
    return this.records.get(id)?.session ?? null;
  }

  /** Every session as last received. */
  *sessions() {
    for (const record of this.records.values()) if (record.session) yield record.session;
  }

  /** Dim the table when the data may be stale (not live), so nobody trusts it blindly. */
  setStale(stale) {
    this.root.classList.toggle('stale', stale);
  }

  #put(session) {
    const record = this.records.get(session.id);
    if (record) {
      record.session = session;
      record.updatedMs = parseTime(session.updatedAt);
    } else {
      this.records.set(session.id, {
        id: session.id,
        session,
        updatedMs: parseTime(session.updatedAt),
        row: null,
        cells: null,
        shown: null,
        timeText: '',
        stallText: '',
        index: -1,
      });
    }
    this.dirty.add(session.id);
  }

  #remove(id) {
    const record = this.records.get(id);
    if (!record) return;
    record.session = null;
    this.dirty.add(id);
  }

  #schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.#render();
    });
  }

  #render() {
    const started = performance.now();
    let dirtyCount = 0;
    const deletions = [];
    for (const id of this.dirty) {
      this.dirty.delete(id); // deleting the current entry while iterating a Set is safe
      const record = this.records.get(id);
      if (record?.session === null) deletions.push(record);
      else if (record) this.#drawRow(record);
      if (++dirtyCount >= ROWS_PER_FRAME_MAX) break;
    }
    const animate = deletions.length <= ANIMATED_LEAVES_MAX;
    for (const record of deletions) this.#leave(record, animate);
    if (dirtyCount || this.structureDirty) this.#layout();
    this.structureDirty = false;
    this.#drawFlashes();
    if (this.feedQueue.length) this.#drawFeed();
    this.#drawClock(Date.now());
    if (this.dirty.size) {
      this.#schedule(); // the rest of a burst: next frame, so this one stays short
    } else {
      this.#drawPosition(); // only once every row is drawn does the page claim this seq
    }
    this.drawnOnce = this.position !== null;
    this.lastFrameStats = { ms: performance.now() - started, dirty: dirtyCount };
  }

  #drawRow(record) {
    const s = record.session;
    if (!record.row) {
      const cells = {};
      const row = el('tr', { 'data-testid': 'session-row', role: 'row' });
      for (const field of FIELDS) {
        cells[field] = el('td', { 'data-field': field, role: 'cell' });
        row.append(cells[field]);
      }
      row.dataset.sessionId = s.id;
      record.row = row;
      record.cells = cells;
      for (const field of FIELDS) draw[field](cells[field], s, record);
      record.shown = s;
      // Rows of the first snapshot just appear; rows born later say so.
      if (this.drawnOnce) this.flashes.push([record, null]);
    } else {
      const shown = record.shown;
      const changed = [];
      for (const field of FIELDS) {
        if (fingerprint[field](shown) === fingerprint[field](s)) continue;
        draw[field](record.cells[field], s, record);
        if (!QUIET_FIELDS.has(field)) changed.push(record.cells[field]);
      }
      if (changed.length) this.flashes.push([record, changed]);
      record.shown = s;
    }
    record.row.dataset.state = s.state;
    record.row.classList.toggle('needs-you', needsAttention(s.state));
    if (s.stalledSince) record.row.dataset.stalled = 'true';
    else delete record.row.dataset.stalled;
    this.structureDirty = true;
  }

  #leave(record, animate) {
    const row = record.row;
    this.records.delete(record.id);
    if (!row) return;
    row.removeAttribute('data-testid');
    row.dataset.leaving = 'true';
    if (animate && !row.hidden) {
      row.classList.add('leaving');
      setTimeout(() => row.remove(), LEAVE_MS);
    } else {
      row.remove();
    }
  }

  /** Order, visibility, counts and filter options: one pass over every record. */
  #layout() {
    const { repo, state, text } = this.prefs;
    const needle = text.trim().toLowerCase();
    const all = [...this.records.values()].filter((r) => r.row);
    const direction = this.prefs.newestFirst ? -1 : 1;
    all.sort((a, b) => {
      const ta = Number.isFinite(a.updatedMs) ? a.updatedMs : 0;
      const tb = Number.isFinite(b.updatedMs) ? b.updatedMs : 0;
      if (ta !== tb) return (ta - tb) * direction;
      return a.session.id < b.session.id ? -1 : 1;
    });

    const counts = new Map();
    const repos = new Set();
    let shown = 0;
    for (const record of all) {
      const s = record.session;
      repos.add(s.repository);
      const facet =
        (!repo || s.repository === repo) &&
        (!needle ||
          (s.title || '').toLowerCase().includes(needle) ||
          (s.branch || '').toLowerCase().includes(needle) ||
          (s.repository || '').toLowerCase().includes(needle) ||
          s.id.includes(needle));
      if (facet) counts.set(s.state, (counts.get(s.state) ?? 0) + 1);
      const visible = facet && (!state || s.state === state);
      if (record.row.hidden === visible) record.row.hidden = !visible;
      record.index = visible ? shown : -1;
      if (visible) shown += 1;
    }

    // Move only the rows that are out of place: an update to one session is one move.
    let cursor = this.body.firstElementChild;
    for (const record of all) {
      while (cursor && cursor.dataset.leaving) cursor = cursor.nextElementSibling;
      if (record.row === cursor) cursor = cursor.nextElementSibling;
      else this.body.insertBefore(record.row, cursor);
    }

    this.#drawCounts(counts, all.length);
    this.#drawRepoOptions(repos);
    this.showing.textContent =
      shown === all.length
        ? `${all.length.toLocaleString()} ${all.length === 1 ? 'session' : 'sessions'}`
        : `Showing ${shown.toLocaleString()} of ${all.length.toLocaleString()} sessions`;
    this.#drawEmpty(all.length, shown);
    this.root.dataset.rows = String(all.length);
    this.root.dataset.visibleRows = String(shown);
  }

  /** Highlight what changed; in a burst, only near the top of the list, where eyes are. */
  #drawFlashes() {
    const burst = this.flashes.length > FLASH_ROWS_MAX;
    for (const [record, cells] of this.flashes) {
      if (!record.session || (burst && !(record.index >= 0 && record.index < FLASH_ROWS_MAX)))
        continue;
      if (cells === null) flash(record.row);
      else for (const cell of cells) flash(cell);
    }
    this.flashes = [];
  }

  #drawCounts(counts, total) {
    const states = [...STATE_ORDER];
    for (const s of [...counts.keys()].sort()) if (!states.includes(s)) states.push(s);
    if (this.prefs.state && !states.includes(this.prefs.state)) states.push(this.prefs.state);
    const key = states.join(',');
    if (key !== this.chipStates) {
      this.chipStates = key;
      this.chips.clear();
      const nodes = [];
      for (const state of ['', ...states]) {
        const info = state ? stateInfo(state) : { label: 'All', tone: 'all' };
        const count = el('span', { class: 'chip-count', text: '0' });
        const button = el(
          'button',
          {
            type: 'button',
            class: `chip tone-${info.tone}`,
            'data-testid': state ? `count-${state}` : 'count-all',
            'aria-pressed': 'false',
          },
          count,
          el('span', { class: 'chip-label', text: info.label }),
        );
        button.dataset.state = state;
        button.title = state
          ? `Show only ${info.label.toLowerCase()} sessions`
          : 'Show every state';
        this.chips.set(state, { button, count });
        nodes.push(button);
      }
      this.counts.replaceChildren(...nodes);
    }
    let facetTotal = 0;
    for (const n of counts.values()) facetTotal += n;
    for (const [state, chip] of this.chips) {
      const n = state ? (counts.get(state) ?? 0) : facetTotal;
      const text = n.toLocaleString();
      if (chip.count.textContent !== text) chip.count.textContent = text;
      chip.button.classList.toggle('zero', n === 0);
      chip.button.setAttribute('aria-pressed', String(this.prefs.state === state));
    }
    this.counts.dataset.total = String(total);
  }

  #drawRepoOptions(repos) {
    if (this.prefs.repo) repos.add(this.prefs.repo); // keep the chosen one while it is empty
    const sorted = [...repos].filter(Boolean).sort();
    const key = sorted.join('\n');
    if (key === this.repoOptions) return;
    this.repoOptions = key;
    this.repoSelect.replaceChildren(
      el('option', { value: '', text: 'All repositories' }),
      ...sorted.map((r) => el('option', { value: r, text: r })),
    );
    this.repoSelect.value = this.prefs.repo;
  }

  #drawEmpty(total, shown) {
    if (shown > 0) {
      this.empty.hidden = true;
      return;
    }
    this.empty.hidden = false;
    if (total === 0) {
      this.empty.replaceChildren(
        el('p', { class: 'empty-title', text: 'No sessions yet' }),
        el('p', {
          text: 'Sessions you start in Jules appear here as soon as the service sees them.',
        }),
      );
    } else {
      const clear = el('button', { type: 'button', class: 'button', text: 'Clear filters' });
      clear.addEventListener('click', () => this.#setPrefs({ repo: '', state: '', text: '' }));
      this.empty.replaceChildren(
        el('p', { class: 'empty-title', text: 'No session matches these filters' }),
        clear,
      );
    }
  }

  #drawFeed() {
    const now = Date.now();
    const fresh = this.feedQueue.splice(0).reverse(); // newest first
    const nodes = [];
    for (const delta of fresh.slice(0, FEED_MAX)) {
      if (delta.type === 'note') {
        nodes.push(this.#feedNote(delta));
        continue;
      }
      const session = delta.after ?? delta.before ?? { id: delta.sessionId };
      const ms = parseTime(delta.timestamp);
      const time = el('time', { class: 'feed-time', dateTime: delta.timestamp ?? '' });
      time.title = absoluteTime(ms);
      // Read in DOM order this is "acme/api · PLANNING → IN_PROGRESS <title> <time>";
      // the grid in style.css puts the time up beside the repository.
      const parts = [
        el('span', { class: 'feed-repo', text: session.repository || '—' }),
        el('span', { class: 'visually-hidden', text: ' · ' }),
        el('span', { class: 'feed-change', text: describeDelta(delta) }),
        el('span', {
          class: 'feed-title',
          text: ` ${session.title || `Session ${delta.sessionId}`}`,
        }),
        time,
      ];
      const target =
        delta.type === 'deleted'
          ? el('div', { class: 'feed-target' }, ...parts)
          : el(
              'button',
              { type: 'button', class: 'feed-target', title: 'Show this session in the table' },
              ...parts,
            );
      target.dataset.sessionId = delta.sessionId;
      const li = el(
        'li',
        { class: `feed-item tone-${deltaTone(delta)}`, 'data-testid': 'feed-item' },
        el('span', { class: 'feed-dot', 'aria-hidden': 'true' }),
        target,
      );
      li.dataset.type = delta.type;
      li.dataset.seq = String(delta.seq);
      nodes.push(li);
      this.feedItems.push({ li, time, ms, text: '' });
    }
    this.feedList.prepend(...nodes);
    // feedItems was appended newest-last within this batch; keep the array newest first.
    const added = this.feedItems.splice(this.feedItems.length - nodes.length);
    this.feedItems.unshift(...added);
    for (const stale of this.feedItems.splice(FEED_MAX)) stale.li.remove();
    this.feedEmpty.hidden = this.feedItems.length > 0;
    this.#drawClock(now);
  }

  #feedNote(note) {
    const ms = parseTime(note.timestamp);
    const time = el('time', { class: 'feed-time', dateTime: note.timestamp });
    time.title = absoluteTime(ms);
    const li = el(
      'li',
      { class: 'feed-item feed-note', 'data-testid': 'feed-note' },
      el('span', { class: 'feed-dot', 'aria-hidden': 'true' }),
      el(
        'div',
        { class: 'feed-target' },
        el('span', { class: 'feed-repo', text: 'Control room' }),
        el('span', { class: 'visually-hidden', text: ' · ' }),
        el('span', { class: 'feed-change', text: note.text }),
        time,
      ),
    );
    this.feedItems.push({ li, time, ms, text: '' });
    return li;
  }

  #drawClock(now) {
    for (const record of this.records.values()) {
      if (!record.row || record.row.hidden) continue;
      const text = relativeTime(record.updatedMs, now);
      if (text !== record.timeText) {
        record.timeText = text;
        record.cells.updatedAt.firstChild.textContent = text;
      }
      if (record.session.stalledSince) {
        const stall = stallText(record.session.stalledSince, now);
        if (stall !== record.stallText) {
          record.stallText = stall;
          const note = record.cells.state.querySelector('.stall');
          if (note) note.textContent = stall;
        }
      }
    }
    for (const item of this.feedItems) {
      const text = relativeTime(item.ms, now);
      if (text !== item.text) {
        item.text = text;
        item.time.textContent = text;
      }
    }
  }

  #drawPosition() {
    const p = this.position;
    if (!p) return;
    this.root.dataset.seq = String(p.seq);
    this.root.dataset.epoch = p.epoch;
    this.positionText.textContent = `seq ${p.seq.toLocaleString()} · epoch ${p.epoch}`;
  }

  #tick() {
    if (document.hidden || this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.#render();
    });
  }

  #setPrefs(changes) {
    Object.assign(this.prefs, changes);
    try {
      localStorage.setItem(FILTERS_KEY, JSON.stringify(this.prefs));
    } catch {
      // storage full or disabled: filters just won't survive a reload
    }
    this.repoSelect.value = this.prefs.repo;
    if (this.textInput.value !== this.prefs.text) this.textInput.value = this.prefs.text;
    this.#syncSortHeader();
    this.structureDirty = true;
    this.#schedule();
  }

  #syncSortHeader() {
    const newest = this.prefs.newestFirst;
    this.sortHeader.setAttribute('aria-sort', newest ? 'descending' : 'ascending');
    this.sortButton.dataset.direction = newest ? 'desc' : 'asc';
    this.sortButton.title = newest
      ? 'Newest first (click for oldest first)'
      : 'Oldest first (click for newest first)';
  }

  #reveal(id) {
    const record = this.records.get(id);
    if (!record?.row) return;
    if (record.row.hidden) {
      this.#setPrefs({ repo: '', state: '', text: '' });
    }
    requestAnimationFrame(() => {
      record.row.scrollIntoView({ block: 'center', behavior: 'smooth' });
      flash(record.row);
      record.row.querySelector('a')?.focus({ preventScroll: true });
    });
  }

  #wire() {
    this.textInput.value = this.prefs.text;
    this.repoSelect.addEventListener('change', () =>
      this.#setPrefs({ repo: this.repoSelect.value }),
    );
    this.textInput.addEventListener('input', () => this.#setPrefs({ text: this.textInput.value }));
    this.sortButton.addEventListener('click', () =>
      this.#setPrefs({ newestFirst: !this.prefs.newestFirst }),
    );
    this.counts.addEventListener('click', (event) => {
      const chip = event.target.closest('button.chip');
      if (!chip) return;
      const state = chip.dataset.state;
      this.#setPrefs({ state: state && this.prefs.state === state ? '' : state });
    });
    // A click anywhere on a row (not on one of its links) opens the session's detail, like
    // its title link does from the keyboard. Selecting text in a row is not a click.
    this.body.addEventListener('click', (event) => {
      if (event.target.closest('a, button') || String(window.getSelection?.() ?? '')) return;
      const row = event.target.closest('tr[data-session-id]');
      if (row && !row.dataset.leaving) this.onOpen?.(row.dataset.sessionId);
    });
    this.feedList.addEventListener('click', (event) => {
      const target = event.target.closest('button.feed-target');
      if (target) this.#reveal(target.dataset.sessionId);
    });
    // A finished highlight is removed, so moving the row later does not replay it.
    // (A row's own highlight runs on its cells, so its animationend arrives from a cell.)
    this.body.addEventListener('animationend', (event) => {
      for (const node of [event.target, event.target.parentElement]) {
        if (node?.dataset.flash) delete node.dataset.flash;
      }
    });
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden) this.#tick();
    });
  }
}

/** Replay the highlight on `node`: alternating names restart a CSS animation without reflow. */
function flash(node) {
  node.dataset.flash = node.dataset.flash === 'a' ? 'b' : 'a';
}
