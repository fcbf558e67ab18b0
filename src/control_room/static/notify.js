// Browser notifications for sessions that newly need you, with what they need: the plan's
// first steps, or the question. Off until the person asks for them: the permission prompt
// appears only after a click on the button (a page that asks on load gets denied, rightly).

import { latestPlan, lastAgentMessage } from './timeline.js';
import { parseTime } from './format.js';

const PREF_KEY = 'control-room.notify';
// A session's state and the activity that explains it (the plan, the question) may arrive
// a moment apart; the notification waits this long for it, then goes out with what it has.
const CONTENT_WAIT_MS = 3000;
// An activity this much older than the session's last change is from an earlier round
// (the previous plan, an old question): not what the session waits on now.
const FRESH_MS = 120_000;
const PLAN_STEPS_SHOWN = 3;
const QUESTION_CHARS_MAX = 300; // notification bodies are cut by the system around here

/** The notification button in the top bar, and the notifications it allows. */
export class Alerts {
  #button;
  #onOpen;
  #pending = new Map(); // id -> {session, timer}
  sent = []; // [{sessionId, title, body}]: what was shown (for the curious, and the tests)

  constructor(button, { onOpen }) {
    this.#button = button;
    this.#onOpen = onOpen;
    button.addEventListener('click', () => this.#toggle());
    this.#draw();
  }

  /** True when notifications are wanted and allowed. */
  get enabled() {
    return supported() && Notification.permission === 'granted' && readPref();
  }

  /** A session newly needs you: tell, once its plan or question is known (or soon anyway). */
  needsYou(session, timeline) {
    if (!this.enabled) return;
    this.cancel(session.id);
    const timer = setTimeout(() => this.#fire(session.id), CONTENT_WAIT_MS);
    this.#pending.set(session.id, { session, timer });
    this.timelineChanged(session.id, timeline);
  }

  /** The session's timeline changed: maybe it now holds what the notification should say. */
  timelineChanged(id, timeline) {
    const waiting = this.#pending.get(id);
    if (waiting && timeline && content(waiting.session, timeline, { freshOnly: true })) {
      this.#fire(id, timeline);
    }
  }

  /** The session no longer needs you: a notification not yet shown is dropped. */
  cancel(id) {
    const waiting = this.#pending.get(id);
    if (!waiting) return;
    clearTimeout(waiting.timer);
    this.#pending.delete(id);
  }

  #fire(id, timeline = null) {
    const waiting = this.#pending.get(id);
    if (!waiting) return;
    this.cancel(id);
    if (!this.enabled) return;
    const { session } = waiting;
    const { title, body } = content(session, timeline, { freshOnly: false });
    try {
      const shown = new Notification(title, { body, tag: `control-room-${id}` });
      shown.addEventListener('click', () => {
        window.focus();
        shown.close();
        this.#onOpen(id);
      });
    } catch {
      return; // a platform that lists the API but refuses to show (some mobile browsers)
    }
    this.sent.push({ sessionId: id, title, body });
  }

  async #toggle() {
    if (!supported()) return;
    if (this.enabled) {
      writePref(false);
    } else if (Notification.permission === 'granted') {
      writePref(true);
    } else if (Notification.permission === 'default') {
      const answer = await Notification.requestPermission();
      writePref(answer === 'granted');
    }
    this.#draw();
  }

  #draw() {
    const button = this.#button;
    if (!supported()) {
      button.hidden = true;
      return;
    }
    button.hidden = false;
    const permission = Notification.permission;
    const on = this.enabled;
    button.setAttribute('aria-pressed', String(on));
    button.dataset.permission = permission;
    if (permission === 'denied') {
      button.textContent = 'Notifications blocked';
      button.title =
        "Notifications are blocked for this site: allow them in the browser's site settings";
    } else if (on) {
      button.textContent = 'Notifications on';
      button.title = 'You are notified when a session needs you. Click to stop.';
    } else {
      button.textContent = 'Notify me';
      button.title = 'Get a browser notification when a session needs your approval or answer';
    }
  }
}

/** The notification for a session that needs you; null (freshOnly) when the reason is unknown. */
export function content(session, timeline, { freshOnly }) {
  const name = session.title || `Session ${session.id}`;
  const list = timeline?.list ?? [];
  const since = parseTime(session.updatedAt) - FRESH_MS;
  const fresh = (activity) => activity && (parseTime(activity.createdAt) >= since || !freshOnly);
  if (session.state === 'AWAITING_PLAN_APPROVAL') {
    const plan = latestPlan(list);
    if (!fresh(plan))
      return freshOnly
        ? null
        : {
            title: `Plan to approve: ${name}`,
            body: 'Jules has a plan and waits for your approval.',
          };
    const steps = [...(plan.plan.steps ?? [])].sort((a, b) => (a.index ?? 0) - (b.index ?? 0));
    const lines = steps.slice(0, PLAN_STEPS_SHOWN).map((step, i) => `${i + 1}. ${step.title}`);
    if (steps.length > PLAN_STEPS_SHOWN)
      lines.push(`+${steps.length - PLAN_STEPS_SHOWN} more steps`);
    return { title: `Plan to approve: ${name}`, body: lines.join('\n') };
  }
  const question = lastAgentMessage(list);
  if (!fresh(question))
    return freshOnly
      ? null
      : { title: `Jules asks: ${name}`, body: 'Jules waits for your answer.' };
  const text =
    question.message.length > QUESTION_CHARS_MAX
      ? `${question.message.slice(0, QUESTION_CHARS_MAX - 1)}…`
      : question.message;
  return { title: `Jules asks: ${name}`, body: text };
}

function supported() {
  return typeof window.Notification === 'function' && window.isSecureContext;
}

let pref = null; // the choice of this page, when storage cannot keep it

function readPref() {
  try {
    return pref ?? localStorage.getItem(PREF_KEY) === '1';
  } catch {
    return Boolean(pref);
  }
}

function writePref(on) {
  pref = on;
  try {
    if (on) localStorage.setItem(PREF_KEY, '1');
    else localStorage.removeItem(PREF_KEY);
  } catch {
    // storage disabled: the choice lasts as long as this page
  }
}
