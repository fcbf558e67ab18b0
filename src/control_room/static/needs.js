// "Needs you": the sessions waiting on a person (a plan to approve, a question to answer),
// at the top of the board, with what they wait for and the action that unblocks them.
//
// The set is kept as data arrives (not when frames are drawn), so the tab title's count and
// notifications stay right in a background tab, where browsers stop animation frames. The
// cards themselves are drawn once per frame, each keyed by session, and updated in place: a
// reply being typed survives every live update.

import { planSteps } from './activity.js';
import { el, sessionHref, setText } from './dom.js';
import {
  commandError,
  duration,
  needsAttention,
  parseTime,
  splitRepository,
  stateInfo,
} from './format.js';
import { lastAgentMessage, latestPlan } from './timeline.js';

const CARDS_SHOWN = 6; // two rows on a laptop: more would push the board off the screen
const PLAN_STEPS_SHOWN = 3; // enough to judge a plan at a glance; the detail has them all
const CLOCK_TICK_MS = 1000;

/** The sessions that wait for a person, drawn as cards with their actions. */
export class NeedsYou {
  #section;
  #list;
  #count;
  #more;
  #timelines;
  #commands;
  #alerts;
  #baseTitle;
  #needing = new Map(); // id -> session, for sessions that need you now
  #watching = new Set(); // ids whose timelines are kept whole for their cards
  #cards = new Map(); // id -> card parts
  #dirty = new Set();
  #frame = 0;
  #controls = false;
  #expanded = false;

  constructor(doc, { timelines, commands, alerts }) {
    this.#section = doc.getElementById('needs-you');
    this.#list = doc.getElementById('needs-list');
    this.#count = doc.getElementById('needs-count');
    this.#more = doc.getElementById('needs-more');
    this.#timelines = timelines;
    this.#commands = commands;
    this.#alerts = alerts;
    this.#baseTitle = doc.title;
    timelines.onChange((id) => {
      if (!this.#needing.has(id)) return;
      this.#alerts.timelineChanged(id, timelines.get(id));
      this.#mark(id);
    });
    this.#more.addEventListener('click', () => {
      this.#expanded = !this.#expanded;
      this.#mark(null);
    });
    setInterval(() => this.#tick(), CLOCK_TICK_MS);
  }

  /** How many sessions need you now. */
  get count() {
    return this.#needing.size;
  }

  /** After a snapshot: `initial` for the first one (nothing in it is news). */
  replaceAll(sessions, { initial }) {
    const seen = new Set();
    for (const session of sessions) {
      seen.add(session.id);
      this.update(session.id, session, { quiet: initial });
    }
    for (const id of [...this.#needing.keys()]) if (!seen.has(id)) this.update(id, null);
  }

  /** A session changed (`session` null: it left the listing). */
  update(id, session, { quiet = false } = {}) {
    const before = this.#needing.get(id);
    const needs = Boolean(session && needsAttention(session.state));
    if (needs) {
      this.#needing.set(id, session);
      // Entering, or asking for something else (a question after a plan): that is news,
      // told with the plan or the question, so its timeline is read now.
      if (!quiet && (!before || before.state !== session.state)) {
        this.#watch(id);
        this.#alerts.needsYou(session, this.#timelines.get(id));
      }
    } else if (before) {
      this.#needing.delete(id);
      this.#unwatch(id);
      this.#alerts.cancel(id);
    }
    if (needs || before) this.#mark(id);
    this.#title();
  }

  /** Show or hide the cards' actions (a read-only token sees none). */
  setControls(enabled) {
    this.#controls = enabled;
    for (const id of this.#cards.keys()) this.#dirty.add(id);
    this.#mark(null);
  }

  // Timelines are read for the cards on show (and for news), not for every session that
  // waits: a board with 50 waiting sessions does not make 50 reads of Jules at load.
  #watch(id) {
    if (this.#watching.has(id)) return;
    this.#watching.add(id);
    this.#timelines.watch(id);
  }

  #unwatch(id) {
    if (this.#watching.delete(id)) this.#timelines.unwatch(id);
  }

  #title() {
    const n = this.#needing.size;
    const title = n ? `(${n}) ${this.#baseTitle}` : this.#baseTitle;
    if (document.title !== title) document.title = title;
  }

  #mark(id) {
    if (id !== null) this.#dirty.add(id);
    if (this.#frame) return;
    this.#frame = requestAnimationFrame(() => {
      this.#frame = 0;
      this.#render();
    });
  }

  #tick() {
    if (!document.hidden && this.#cards.size) this.#mark(null);
  }

  #render() {
    for (const id of this.#dirty) {
      const session = this.#needing.get(id);
      const card = this.#cards.get(id);
      if (!session) {
        card?.li.remove();
        this.#cards.delete(id);
      } else {
        this.#draw(card ?? this.#create(session), session);
      }
    }
    this.#dirty.clear();
    // The longest waiting first: it has been blocked the longest.
    const order = [...this.#needing.values()].sort(
      (a, b) =>
        (parseTime(a.updatedAt) || 0) - (parseTime(b.updatedAt) || 0) || (a.id < b.id ? -1 : 1),
    );
    const now = Date.now();
    let cursor = this.#list.firstElementChild;
    order.forEach((session, index) => {
      const card = this.#cards.get(session.id);
      card.li.hidden = !this.#expanded && index >= CARDS_SHOWN;
      if (!card.li.hidden) this.#watch(session.id);
      setText(card.wait, `waiting ${duration(now - parseTime(session.updatedAt)) || 'a moment'}`);
      if (card.li === cursor) cursor = cursor.nextElementSibling;
      else this.#list.insertBefore(card.li, cursor);
    });
    const n = order.length;
    this.#section.hidden = n === 0;
    setText(this.#count, String(n));
    this.#more.hidden = n <= CARDS_SHOWN;
    setText(this.#more, this.#expanded ? 'Show fewer' : `Show all ${n}`);
    this.#more.setAttribute('aria-expanded', String(this.#expanded));
  }

  #create(session) {
    const id = session.id;
    const badge = el('span', { class: 'badge' });
    const repo = el('span', { class: 'need-repo' });
    const wait = el('span', { class: 'need-wait' });
    const title = el('a', {
      class: 'need-title',
      href: sessionHref(id),
      'data-testid': 'needs-title',
    });
    const what = el('div', { class: 'need-what' });
    const actions = el('div', { class: 'need-actions control' });
    const result = el('p', { class: 'need-result', 'data-testid': 'needs-result', role: 'status' });
    const li = el(
      'li',
      { class: 'need-card', 'data-testid': 'needs-item' },
      el('div', { class: 'need-head' }, badge, repo, wait),
      title,
      what,
      actions,
      result,
    );
    li.dataset.sessionId = id;
    const card = { li, badge, repo, wait, title, what, actions, result, kind: '', busy: false };
    this.#cards.set(id, card);
    return card;
  }

  #draw(card, session) {
    const { label, tone } = stateInfo(session.state);
    card.li.dataset.state = session.state;
    card.badge.className = `badge tone-${tone}`;
    setText(card.badge, label);
    const [owner, name] = splitRepository(session.repository);
    setText(
      card.repo,
      [session.repository ? `${owner}${name}` : 'No repository', session.branch]
        .filter(Boolean)
        .join(' · '),
    );
    setText(card.title, session.title || `Session ${session.id}`);

    const timeline = this.#timelines.get(session.id);
    const kind = session.state === 'AWAITING_PLAN_APPROVAL' ? 'plan' : 'question';
    this.#timelines.expect(session.id, kind === 'plan' ? 'planGenerated' : 'agentMessaged');
    if (kind === 'plan') {
      const plan = timeline ? latestPlan(timeline.list)?.plan : null;
      const key = plan ? `plan:${plan.id}` : `plan-wait:${loadingText(timeline, 'plan')}`;
      if (card.whatKey !== key) {
        card.whatKey = key;
        card.what.replaceChildren(
          el('p', { class: 'need-label', text: 'Plan' }),
          plan
            ? planSteps(plan, PLAN_STEPS_SHOWN)
            : el('p', { class: 'muted', text: loadingText(timeline, 'plan') }),
        );
      }
    } else {
      const question = timeline ? lastAgentMessage(timeline.list) : null;
      const key = question ? `q:${question.id}` : `q-wait:${loadingText(timeline, 'question')}`;
      if (card.whatKey !== key) {
        card.whatKey = key;
        card.what.replaceChildren(
          el('p', { class: 'need-label', text: 'Jules asks' }),
          question
            ? el('p', {
                class: 'bubble clamp',
                text: question.message,
                'data-testid': 'needs-question',
              })
            : el('p', { class: 'muted', text: loadingText(timeline, 'question') }),
        );
      }
    }
    card.actions.hidden = !this.#controls;
    if (card.kind !== kind) {
      card.kind = kind;
      card.actions.replaceChildren(
        ...(kind === 'plan'
          ? this.#approveActions(card, session.id)
          : this.#replyActions(card, session.id)),
      );
    }
  }

  #approveActions(card, id) {
    const approve = el('button', {
      type: 'button',
      class: 'button primary',
      text: 'Approve plan',
      'data-testid': 'needs-approve',
    });
    approve.addEventListener('click', async () => {
      if (card.busy) return;
      card.busy = true;
      approve.disabled = true;
      setText(approve, 'Approving…');
      this.#say(card, '', '');
      const result = await this.#commands.send({ type: 'approvePlan', sessionId: id });
      card.busy = false;
      approve.disabled = false;
      setText(approve, 'Approve plan');
      // On success the session moves on and its card leaves with the delta.
      if (result.ok) this.#say(card, 'Approved: Jules is starting work.', 'success');
      else this.#say(card, commandError(result.error), 'error');
    });
    const review = el('a', {
      class: 'button quiet',
      href: sessionHref(id),
      text: 'Review the plan',
    });
    return [approve, review];
  }

  #replyActions(card, id) {
    const text = el('textarea', {
      class: 'need-reply',
      rows: 2,
      placeholder: 'Your answer…',
      'data-testid': 'needs-reply',
      'aria-label': 'Your answer to Jules',
    });
    const send = el('button', {
      type: 'submit',
      class: 'button primary',
      text: 'Send',
      'data-testid': 'needs-send',
    });
    const form = el('form', { class: 'need-form' }, text, send);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const prompt = text.value;
      if (card.busy) return;
      if (!prompt.trim()) {
        this.#say(card, 'Write an answer first.', 'error');
        text.focus();
        return;
      }
      card.busy = true;
      send.disabled = true;
      setText(send, 'Sending…');
      const result = await this.#commands.send({ type: 'sendMessage', sessionId: id, prompt });
      card.busy = false;
      send.disabled = false;
      setText(send, 'Send');
      if (result.ok) {
        if (text.value === prompt) text.value = '';
        this.#say(card, 'Sent: Jules is back at work.', 'success');
      } else {
        this.#say(card, commandError(result.error), 'error');
      }
    });
    text.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
    return [form];
  }

  #say(card, text, tone) {
    setText(card.result, text);
    card.result.dataset.tone = tone;
    card.result.setAttribute('role', tone === 'error' ? 'alert' : 'status');
  }
}

/** What a card says while its plan or question is not known: loading, failed, or none. */
function loadingText(timeline, what) {
  if (timeline?.error) {
    return `Could not read the ${what}: ${timeline.error.message || timeline.error.code}`;
  }
  if (!timeline || timeline.loading) return `Loading the ${what}…`;
  return what === 'plan' ? 'No plan in the timeline yet.' : 'Jules is waiting for your answer.';
}
