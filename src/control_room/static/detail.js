// A session's detail, in a drawer over the board: what it is, where it stands, its controls,
// and its live timeline.
//
// It opens from a row, a "Needs you" card or the URL (`#session=<id>`), and closes with
// Escape, the close button or a click beside it. The timeline is read over REST when it opens
// and grows with live activities; drawing happens once per animation frame, and only what
// changed is touched, so a reply being typed is never disturbed by an update.

import { activityItem } from './activity.js';
import { el, externalLink, setText } from './dom.js';
import {
  absoluteTime,
  commandError,
  isFinished,
  parseTime,
  pullRequestLabel,
  relativeTime,
  stallText,
  stateInfo,
} from './format.js';
import { lastAgentMessage } from './timeline.js';

const CLOCK_TICK_MS = 1000; // "3 s ago" in the timeline moves with the table's clock

/** The drawer of one session. `commands.send(command)` resolves with a `result`. */
export class SessionDetail {
  #doc;
  #dialog;
  #sessions; // {session(id)}: the board's current sessions
  #timelines;
  #api;
  #commands;
  #onDone; // (text) => void: a note for the feed after an archive or delete
  #id = null;
  #known = null; // the session as last drawn (kept once it left the listing)
  #fresh = false; // opened with a hint: not listed *yet*, rather than gone
  #watching = false; // the open session's timeline is watched (it is, or was, listed)
  #opener = null; // what had focus before: it gets it back on close
  #items = new Map(); // activity id -> {item, time, ms}
  #frame = 0;
  #dirty = { head: false, timeline: false };
  #busy = ''; // the command in flight: approve, send, archive, delete
  #resultState = ''; // the session's state when the last result was said
  #controls = false;
  #clock = 0;
  #$;

  constructor(doc, { sessions, timelines, api, commands, onDone }) {
    this.#doc = doc;
    this.#sessions = sessions;
    this.#timelines = timelines;
    this.#api = api;
    this.#commands = commands;
    this.#onDone = onDone;
    const $ = (id) => doc.getElementById(id);
    this.#$ = $;
    this.#dialog = $('detail');
    this.#wire();
    timelines.onChange((sessionId) => {
      if (sessionId === this.#id) this.#mark('timeline');
    });
  }

  /** The id of the open session, or null. */
  get openId() {
    return this.#id;
  }

  /**
   * Open (or switch to) a session's detail. `hint`: the session as a command returned it,
   * shown until the stream brings it (a session just created).
   */
  open(sessionId, { hint = null } = {}) {
    if (this.#id === sessionId && this.#dialog.open) return;
    if (this.#id !== null && this.#watching) this.#timelines.unwatch(this.#id);
    if (!this.#dialog.open) this.#opener = this.#doc.activeElement;
    this.#id = sessionId;
    this.#known = hint;
    this.#fresh = hint !== null;
    this.#watching = false;
    this.#busy = '';
    this.#items.clear();
    this.#$('timeline').replaceChildren();
    this.#$('reply-text').value = '';
    this.#result('', '');
    this.#confirmDelete(false);
    this.#dialog.dataset.sessionId = sessionId;
    const session = this.#sessions.session(sessionId);
    if (!this.#dialog.open) this.#dialog.showModal();
    this.#drawHead();
    this.#drawTimeline();
    this.#focusFirst(session);
    clearInterval(this.#clock);
    this.#clock = setInterval(() => this.#drawClock(), CLOCK_TICK_MS);
  }

  /** Close the drawer (focus goes back to where it was). */
  close() {
    if (this.#dialog.open) this.#dialog.close();
  }

  /** A session changed (or left the listing): redraw the head if it is the open one. */
  sessionChanged(sessionId) {
    if (sessionId === this.#id) this.#mark('head');
  }

  /** Everything may have changed (a snapshot): redraw. */
  refresh() {
    if (this.#id !== null) {
      this.#mark('head');
      this.#mark('timeline');
    }
  }

  /** Show or hide every control (a read-only token sees none). */
  setControls(enabled) {
    this.#controls = enabled;
    if (this.#id !== null) this.#mark('head');
  }

  #mark(part) {
    this.#dirty[part] = true;
    if (this.#frame) return;
    this.#frame = requestAnimationFrame(() => {
      this.#frame = 0;
      if (!this.#dialog.open) return;
      if (this.#dirty.head) this.#drawHead();
      if (this.#dirty.timeline) this.#drawTimeline();
    });
  }

  #drawHead() {
    this.#dirty.head = false;
    const $ = this.#$;
    const id = this.#id;
    const session = this.#sessions.session(id);
    if (session && !this.#watching) {
      // Read its timeline once it is known to be listed (a link can name any id).
      this.#watching = true;
      this.#timelines.watch(id);
    }
    if (session) this.#fresh = false;
    const shown = session ?? this.#known;
    const gone = !session && !this.#fresh;
    this.#known = shown;
    this.#dialog.dataset.state = session?.state ?? '';
    setText($('detail-title'), shown?.title || `Session ${id}`);
    setText(
      $('detail-repo'),
      shown ? [shown.repository || 'No repository', shown.branch].filter(Boolean).join(' · ') : '',
    );

    const state = $('detail-state');
    if (shown) {
      const { label, tone } = stateInfo(shown.state);
      state.className = `badge tone-${tone}`;
      setText(state, label);
      state.dataset.value = shown.state;
      state.hidden = false;
    } else {
      state.hidden = true;
    }
    const stall = $('detail-stalled');
    stall.hidden = !session?.stalledSince;
    if (session?.stalledSince) setText(stall, stallText(session.stalledSince, Date.now()));

    const links = [];
    if (shown?.url)
      links.push(externalLink(shown.url, 'Open in Jules ↗', 'This session on jules.google.com'));
    if (shown?.pullRequest?.url) {
      const pr = shown.pullRequest;
      links.push(
        externalLink(pr.url, `Pull request ${pullRequestLabel(pr.url)} ↗`, pr.title || pr.url),
      );
    }
    $('detail-links').replaceChildren(...links);
    const created = parseTime(shown?.createdAt);
    const updated = parseTime(shown?.updatedAt);
    setText(
      $('detail-times'),
      shown
        ? `Started ${absoluteTime(created) || '—'} · last change ${relativeTime(updated, Date.now())} · id ${id}`
        : '',
    );
    $('detail-gone').hidden = !gone;
    setText(
      $('detail-gone'),
      this.#known
        ? 'This session is no longer listed: it was archived or deleted.'
        : `This control room does not list a session ${id}: it may have been archived or deleted.`,
    );

    // What Jules waits for, for everyone; the controls only for tokens that may act.
    const st = session?.state;
    // "Plan approved" is news until the session moves on; then the timeline tells more.
    const line = $('detail-result');
    if (line.dataset.tone === 'success' && st && st !== this.#resultState) {
      setText(line, '');
      line.hidden = true;
    }
    const controls = this.#controls && Boolean(session);
    const awaitingPlan = st === 'AWAITING_PLAN_APPROVAL';
    const asking = st === 'AWAITING_USER_FEEDBACK';
    $('detail-approve').hidden = !(controls && awaitingPlan);
    $('approve').disabled = Boolean(this.#busy);
    setText($('approve'), this.#busy === 'approve' ? 'Approving…' : 'Approve plan');

    const reply = $('detail-reply');
    reply.hidden = !controls || st === 'FAILED';
    reply.classList.toggle('prominent', asking);
    // Under the question while Jules asks one; otherwise after the timeline, as in a chat.
    const place = asking ? $('detail-question') : $('detail-timeline');
    if (reply.previousElementSibling !== place) place.after(reply);
    setText($('reply-label'), asking ? 'Your answer' : 'Message Jules');
    $('reply-text').placeholder = asking
      ? 'Answer the question above…'
      : 'Ask for a change, give more context, or nudge it along…';
    $('send').disabled = Boolean(this.#busy);
    setText($('send'), this.#busy === 'send' ? 'Sending…' : 'Send');

    const manage = $('detail-manage');
    manage.hidden = !(controls && isFinished(st));
    for (const button of manage.querySelectorAll('button')) button.disabled = Boolean(this.#busy);
    this.#drawQuestion();
  }

  /** The agent's question above the reply box while it waits for an answer. */
  #drawQuestion() {
    const $ = this.#$;
    const session = this.#sessions.session(this.#id);
    const asking = session?.state === 'AWAITING_USER_FEEDBACK';
    const timeline = this.#timelines.get(this.#id);
    const question = asking && timeline ? lastAgentMessage(timeline.list) : null;
    if (asking) this.#timelines.expect(this.#id, 'agentMessaged');
    else if (session?.state === 'AWAITING_PLAN_APPROVAL') {
      this.#timelines.expect(this.#id, 'planGenerated');
    }
    const block = $('detail-question');
    block.hidden = !asking;
    setText(
      $('question-text'),
      question?.message ??
        (timeline?.loading ? 'Loading the question…' : 'Jules is waiting for your answer.'),
    );
  }

  #drawTimeline() {
    this.#dirty.timeline = false;
    const $ = this.#$;
    const timeline = this.#timelines.get(this.#id);
    const list = timeline?.list ?? [];
    const holder = $('timeline');
    // Activities never change: draw each once, and put it in place (live ones go last).
    let cursor = holder.firstElementChild;
    for (const activity of list) {
      const key = String(activity.id);
      let drawn = this.#items.get(key);
      if (!drawn) {
        drawn = activityItem(activity, { loadPatch: (a) => this.#api.activity(this.#id, a.id) });
        this.#items.set(key, drawn);
      }
      if (drawn.item === cursor) cursor = cursor.nextElementSibling;
      else holder.insertBefore(drawn.item, cursor);
    }
    while (cursor) {
      const next = cursor.nextElementSibling;
      cursor.remove();
      cursor = next;
    }
    this.#drawClock();

    let status = '';
    if (timeline?.error) {
      status = `Could not read the timeline: ${timeline.error.message || timeline.error.code}.`;
    } else if (timeline?.loading && !list.length) {
      status = 'Loading the timeline…';
    } else if (!list.length && this.#sessions.session(this.#id)) {
      status = 'Nothing has happened in this session yet.';
    }
    setText($('timeline-status'), status);
    $('timeline-retry').hidden = !timeline?.error;
    $('timeline-truncated').hidden = !timeline?.truncated;
    $('timeline').dataset.count = String(list.length);
    this.#drawQuestion();
  }

  #drawClock() {
    const now = Date.now();
    for (const drawn of this.#items.values()) {
      setText(drawn.time, relativeTime(drawn.ms, now));
    }
    const session = this.#sessions.session(this.#id);
    if (session?.stalledSince)
      setText(this.#$('detail-stalled'), stallText(session.stalledSince, now));
  }

  #focusFirst(session) {
    const asking = session?.state === 'AWAITING_USER_FEEDBACK';
    if (asking && this.#controls) this.#$('reply-text').focus();
    else this.#$('detail-title').focus();
  }

  #result(text, tone) {
    const line = this.#$('detail-result');
    this.#resultState = this.#sessions.session(this.#id)?.state ?? '';
    setText(line, text);
    line.dataset.tone = tone;
    line.hidden = !text;
    line.setAttribute('role', tone === 'error' ? 'alert' : 'status');
  }

  #confirmDelete(asking) {
    this.#$('delete-confirm').hidden = !asking;
    this.#$('delete').hidden = asking;
  }

  /** Run a command for the open session; `done(result)` when it succeeded. */
  async #run(kind, command, working, done) {
    if (this.#busy) return;
    const id = this.#id;
    this.#busy = kind;
    this.#result(working, 'working');
    this.#drawHead();
    const result = await this.#commands.send({ ...command, sessionId: id });
    if (id !== this.#id) return; // another session was opened meanwhile
    this.#busy = '';
    if (result.ok) done(result);
    else this.#result(commandError(result.error), 'error');
    this.#drawHead();
  }

  #wire() {
    const $ = this.#$;
    const dialog = this.#dialog;
    $('detail-close').addEventListener('click', () => this.close());
    // A click on the backdrop (the dialog box itself, outside its content) closes it.
    dialog.addEventListener('click', (event) => {
      if (event.target === dialog) this.close();
    });
    dialog.addEventListener('close', () => {
      if (dialog.open) return; // closed, then opened again before this event ran
      clearInterval(this.#clock);
      if (this.#id !== null && this.#watching) this.#timelines.unwatch(this.#id);
      this.#watching = false;
      this.#id = null;
      delete dialog.dataset.sessionId;
      // The fragment named this session; it does not any more.
      if (/(^|&)session=/.test(window.location.hash.slice(1))) {
        const { pathname, search } = window.location;
        window.history.replaceState(window.history.state, '', pathname + search);
      }
      const opener = this.#opener;
      this.#opener = null;
      if (opener?.isConnected) opener.focus({ preventScroll: true });
    });
    $('timeline-retry').addEventListener('click', () => {
      if (this.#id !== null) this.#timelines.ensure(this.#id, { retry: true });
    });

    $('approve').addEventListener('click', () =>
      this.#run('approve', { type: 'approvePlan' }, 'Approving the plan…', () =>
        this.#result('Plan approved: Jules is starting work.', 'success'),
      ),
    );
    const form = $('reply-form');
    const text = $('reply-text');
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const prompt = text.value;
      if (!prompt.trim()) {
        this.#result('Write a message first.', 'error');
        text.focus();
        return;
      }
      this.#run('send', { type: 'sendMessage', prompt }, 'Sending…', () => {
        if (text.value === prompt) text.value = '';
        this.#result('Sent to Jules.', 'success');
      });
    });
    text.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
    $('archive').addEventListener('click', () =>
      this.#run('archive', { type: 'archiveSession' }, 'Archiving…', () => {
        const title = this.#known?.title || `session ${this.#id}`;
        this.close();
        this.#onDone(`Archived “${title}”`);
      }),
    );
    $('delete').addEventListener('click', () => {
      this.#confirmDelete(true);
      $('delete-yes').focus();
    });
    $('delete-no').addEventListener('click', () => {
      this.#confirmDelete(false);
      $('delete').focus();
    });
    $('delete-yes').addEventListener('click', () =>
      this.#run('delete', { type: 'deleteSession' }, 'Deleting…', () => {
        const title = this.#known?.title || `session ${this.#id}`;
        this.close();
        this.#onDone(`Deleted “${title}”`);
      }),
    );
  }
}
