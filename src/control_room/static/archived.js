// The "Archived" drawer: Jules' archived sessions, which its default listing (and so the
// table) leaves out, read page by page from GET /api/sessions/archived each time it opens.
// "Unarchive" sends the `unarchiveSession` command; the row leaves the drawer and the
// session comes back into the table through the stream's own `created` delta.

import { el, setText } from './dom.js';
import { absoluteTime, commandError, parseTime, relativeTime, stateInfo } from './format.js';

/** The archived-sessions drawer. `commands.send` resolves with a `result`. */
export class Archived {
  #$;
  #dialog;
  #list;
  #api;
  #commands;
  #onUnarchived;
  #nextToken = '';
  #loading = false;
  #generation = 0; // bumped on each open: a page read for an earlier opening is dropped
  #opener = null;

  constructor(doc, { api, commands, onUnarchived }) {
    const $ = (id) => doc.getElementById(id);
    this.#$ = $;
    this.#dialog = $('archived');
    this.#list = $('archived-list');
    this.#api = api;
    this.#commands = commands;
    this.#onUnarchived = onUnarchived;
    this.#wire();
  }

  /** Open the drawer and read the first page afresh (archiving happens elsewhere too). */
  open() {
    if (this.#dialog.open) return;
    this.#opener = document.activeElement;
    this.#generation += 1;
    this.#nextToken = '';
    this.#loading = false;
    this.#list.replaceChildren();
    this.#say('');
    this.#dialog.showModal();
    this.#$('archived-heading').focus();
    this.#load();
  }

  close() {
    if (this.#dialog.open) this.#dialog.close();
  }

  async #load() {
    if (this.#loading) return;
    this.#loading = true;
    const generation = this.#generation;
    const more = this.#$('archived-more');
    more.disabled = true;
    setText(this.#$('archived-status'), 'Loading archived sessions…');
    const answer = await this.#api.archived(this.#nextToken);
    if (generation !== this.#generation) return;
    this.#loading = false;
    more.disabled = false;
    if (!answer.ok) {
      const why = answer.message || answer.code;
      setText(this.#$('archived-status'), `Could not load archived sessions: ${why}.`);
      this.#$('archived-retry').hidden = false;
      return;
    }
    this.#$('archived-retry').hidden = true;
    const sessions = (answer.body.sessions ?? []).filter((s) => s && s.id);
    const now = Date.now();
    this.#list.append(...sessions.map((s) => this.#row(s, now)));
    const token = answer.body.nextPageToken;
    this.#nextToken = typeof token === 'string' ? token : '';
    more.hidden = !this.#nextToken;
    this.#count();
  }

  #count() {
    const shown = this.#list.children.length;
    let text = '';
    if (!shown && !this.#nextToken) text = 'No archived sessions.';
    else if (!this.#nextToken) text = `${shown.toLocaleString()} archived`;
    else text = `The ${shown.toLocaleString()} most recent archived sessions`;
    setText(this.#$('archived-status'), text);
  }

  #row(s, now) {
    const title = s.title || `Session ${s.id}`;
    const { label, tone } = stateInfo(s.state);
    const updated = parseTime(s.updatedAt);
    const time = el('time', { text: `Updated ${relativeTime(updated, now)}` });
    if (s.updatedAt) time.dateTime = s.updatedAt;
    time.title = absoluteTime(updated);
    const result = el('p', { class: 'archived-result', role: 'status', hidden: true });
    const button = el('button', {
      class: 'button small control',
      type: 'button',
      text: 'Unarchive',
      'data-testid': 'unarchive',
      'aria-label': `Unarchive “${title}”`,
    });
    const row = el(
      'li',
      { class: 'archived-item', 'data-testid': 'archived-item', 'data-session-id': s.id },
      el(
        'div',
        { class: 'archived-main' },
        el('span', { class: 'archived-title', text: title }),
        el('span', { class: 'archived-repo muted', text: s.repository || 'No repository' }),
        el(
          'span',
          { class: 'archived-meta' },
          el('span', { class: `badge tone-${tone}`, text: label }),
          time,
        ),
        result,
      ),
      button,
    );
    button.addEventListener('click', () => this.#unarchive(s.id, title, row, button, result));
    return row;
  }

  async #unarchive(sessionId, title, row, button, result) {
    if (button.disabled) return;
    button.disabled = true;
    setText(button, 'Unarchiving…');
    result.hidden = true;
    const answer = await this.#commands.send({ type: 'unarchiveSession', sessionId });
    if (!answer.ok) {
      button.disabled = false;
      setText(button, 'Unarchive');
      setText(result, commandError(answer.error));
      result.hidden = false;
      return;
    }
    // Keyboard users keep their place: focus moves to the next row's button (or the last).
    const next = row.nextElementSibling ?? row.previousElementSibling;
    const hadFocus = row.contains(document.activeElement);
    row.remove();
    this.#count();
    this.#say(`Unarchived “${title}”: it is back in the table.`);
    if (hadFocus) (next?.querySelector('button') ?? this.#$('archived-close')).focus();
    this.#onUnarchived?.(`Unarchived “${title}”`);
  }

  #say(text) {
    const line = this.#$('archived-result');
    setText(line, text);
    line.hidden = !text;
  }

  #wire() {
    const $ = this.#$;
    $('archived-close').addEventListener('click', () => this.close());
    $('archived-more').addEventListener('click', () => this.#load());
    $('archived-retry').addEventListener('click', () => {
      $('archived-retry').hidden = true;
      this.#load();
    });
    this.#dialog.addEventListener('click', (event) => {
      if (event.target === this.#dialog) this.close();
    });
    this.#dialog.addEventListener('close', () => {
      this.#generation += 1; // a page still on its way is not drawn into a closed drawer
      this.#loading = false;
      const opener = this.#opener;
      this.#opener = null;
      if (opener?.isConnected) opener.focus({ preventScroll: true });
    });
  }
}
