// The "New session" form: a repository and branch from GET /api/sources, a prompt, a title,
// and the two choices Jules asks for (approve the plan first, open a pull request), sent as
// a `createSession` command. The new session's detail opens on success.

import { el, setText } from './dom.js';
import { commandError } from './format.js';

/** The new-session drawer. `commands.send` resolves with a `result`. */
export class Compose {
  #$;
  #dialog;
  #form;
  #api;
  #commands;
  #onCreated;
  #sources = null; // [{repository, branches, defaultBranch}] once read
  #loading = false;
  #busy = false;
  #opener = null;

  constructor(doc, { api, commands, onCreated }) {
    const $ = (id) => doc.getElementById(id);
    this.#$ = $;
    this.#dialog = $('compose');
    this.#form = $('compose-form');
    this.#api = api;
    this.#commands = commands;
    this.#onCreated = onCreated;
    this.#wire();
  }

  /** Open the form (reading the repositories the first time). */
  open() {
    if (this.#dialog.open) return;
    this.#opener = document.activeElement;
    this.#error('');
    this.#dialog.showModal();
    if (this.#sources === null) this.#loadSources();
    (this.#sources === null ? this.#$('compose-prompt') : this.#$('compose-repo')).focus();
  }

  close() {
    if (this.#dialog.open) this.#dialog.close();
  }

  async #loadSources() {
    if (this.#loading) return;
    this.#loading = true;
    const status = this.#$('compose-sources');
    setText(status, 'Loading your repositories…');
    this.#$('compose-sources-retry').hidden = true;
    const answer = await this.#api.sources();
    this.#loading = false;
    if (!answer.ok) {
      setText(status, `Could not load your repositories: ${answer.message || answer.code}.`);
      this.#$('compose-sources-retry').hidden = false;
      return;
    }
    const sources = (answer.body.sources ?? []).filter((s) => s && s.repository);
    sources.sort((a, b) => (a.repository < b.repository ? -1 : 1));
    this.#sources = sources;
    setText(
      status,
      sources.length ? '' : 'Jules has no repositories connected: sessions start without one.',
    );
    const select = this.#$('compose-repo');
    const chosen = select.value;
    select.replaceChildren(
      el('option', { value: '', text: 'No repository' }),
      ...sources.map((s) => el('option', { value: s.repository, text: s.repository })),
    );
    select.value = sources.some((s) => s.repository === chosen)
      ? chosen
      : (sources[0]?.repository ?? '');
    this.#fillBranches();
  }

  #fillBranches() {
    const repository = this.#$('compose-repo').value;
    const source = this.#sources?.find((s) => s.repository === repository);
    const branches = [...(source?.branches ?? [])];
    if (source?.defaultBranch && !branches.includes(source.defaultBranch)) {
      branches.unshift(source.defaultBranch);
    }
    const select = this.#$('compose-branch');
    select.replaceChildren(...branches.map((b) => el('option', { value: b, text: b })));
    select.value = source?.defaultBranch ?? branches[0] ?? '';
    select.disabled = !source || branches.length === 0;
  }

  #error(text) {
    const line = this.#$('compose-error');
    setText(line, text);
    line.hidden = !text;
  }

  async #submit() {
    if (this.#busy) return;
    const $ = this.#$;
    const prompt = $('compose-prompt').value;
    if (!prompt.trim()) {
      this.#error('Tell Jules what to do first: the prompt is empty.');
      $('compose-prompt').focus();
      return;
    }
    const command = {
      type: 'createSession',
      prompt,
      requirePlanApproval: $('compose-approval').checked,
      autoCreatePullRequest: $('compose-pr').checked,
    };
    const repository = $('compose-repo').value;
    if (repository) {
      command.repository = repository;
      if ($('compose-branch').value) command.branch = $('compose-branch').value;
    }
    const title = $('compose-title-input').value.trim();
    if (title) command.title = title;

    this.#busy = true;
    this.#error('');
    const submit = $('compose-submit');
    submit.disabled = true;
    setText(submit, 'Starting…');
    const result = await this.#commands.send(command);
    this.#busy = false;
    submit.disabled = false;
    setText(submit, 'Start session');
    if (!result.ok) {
      this.#error(commandError(result.error));
      return;
    }
    this.#form.reset();
    this.#fillBranches();
    // Focus goes back to the button now, so the new session's detail returns it there.
    const opener = this.#opener;
    this.#opener = null;
    this.close();
    if (opener?.isConnected) opener.focus({ preventScroll: true });
    if (result.session?.id) this.#onCreated(result.session);
  }

  #wire() {
    const $ = this.#$;
    $('compose-close').addEventListener('click', () => this.close());
    $('compose-cancel').addEventListener('click', () => this.close());
    $('compose-repo').addEventListener('change', () => this.#fillBranches());
    $('compose-sources-retry').addEventListener('click', () => this.#loadSources());
    this.#dialog.addEventListener('click', (event) => {
      if (event.target === this.#dialog) this.close();
    });
    this.#dialog.addEventListener('close', () => {
      const opener = this.#opener;
      this.#opener = null;
      if (opener?.isConnected) opener.focus({ preventScroll: true });
    });
    this.#form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.#submit();
    });
    $('compose-prompt').addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        this.#form.requestSubmit();
      }
    });
  }
}
