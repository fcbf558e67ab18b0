// One activity of a session's timeline, drawn: the plan as numbered steps, messages both ways,
// progress, completion or failure, and what the step produced (files changed with a patch
// view, a command's output, media). Activities never change once made, so each is drawn once.

import { el, setText } from './dom.js';
import { absoluteTime, formatBytes, parseTime } from './format.js';

// Lines of a patch drawn at once: a generated file can make a diff of 100,000 lines, which
// would freeze the tab; the rest stays one click away (the same request, already loaded).
const PATCH_LINES_SHOWN = 4000;

const WHO = { agent: 'Jules', user: 'You', system: 'Automatically' };

/** Who did it, in a word: Jules, You, or Automatically (the system). */
export function who(activity) {
  return WHO[activity.originator] ?? (activity.originator || 'Jules');
}

/** What happened, in a few words: "proposed a plan (4 steps)", "approved the plan". */
export function headline(activity) {
  switch (activity.kind) {
    case 'planGenerated': {
      const steps = activity.plan?.steps?.length ?? 0;
      return `proposed a plan (${steps} ${steps === 1 ? 'step' : 'steps'})`;
    }
    case 'planApproved':
      return 'approved the plan';
    case 'agentMessaged':
    case 'userMessaged':
      return 'wrote';
    case 'progressUpdated':
      return activity.title || activity.description || 'made progress';
    case 'sessionCompleted':
      return 'completed the session';
    case 'sessionFailed':
      return 'failed';
    default:
      // The API is alpha: a kind this page does not know is shown by its name.
      return activity.description || String(activity.kind || 'activity');
  }
}

/** The steps of a plan as a numbered list (`limit`: only the first few, then "+N more"). */
export function planSteps(plan, limit = Infinity) {
  const steps = [...(plan?.steps ?? [])].sort((a, b) => (a.index ?? 0) - (b.index ?? 0));
  const list = el('ol', { class: 'plan-steps', 'data-testid': 'plan-steps' });
  for (const step of steps.slice(0, limit)) {
    const item = el(
      'li',
      { 'data-testid': 'plan-step' },
      el('span', { class: 'step-title', text: step.title || '' }),
    );
    if (step.description && limit === Infinity) {
      item.append(el('span', { class: 'step-description', text: step.description }));
    }
    list.append(item);
  }
  if (steps.length > limit) {
    list.append(el('li', { class: 'more', text: `+${steps.length - limit} more` }));
  }
  return list;
}

/**
 * The timeline item of one activity. `loadPatch(activity)` resolves with the API's answer
 * for the activity's whole patches ({ok, body: {patches}} or {ok: false, message}).
 */
export function activityItem(activity, { loadPatch }) {
  const kind = String(activity.kind || 'unknown');
  const ms = parseTime(activity.createdAt);
  const time = el('time', { class: 'tl-time', dateTime: activity.createdAt ?? '' });
  time.title = absoluteTime(ms);
  const item = el(
    'li',
    {
      class: `tl-item kind-${kind} by-${activity.originator || 'agent'}`,
      'data-testid': 'activity',
    },
    el(
      'div',
      { class: 'tl-head' },
      el('span', { class: 'tl-who', text: who(activity) }),
      el('span', { class: 'tl-what', text: ` ${headline(activity)}` }),
      time,
    ),
  );
  item.dataset.kind = kind;
  item.dataset.activityId = String(activity.id);
  const body = activityBody(activity);
  if (body) item.append(body);
  for (const artifact of activity.artifacts ?? []) {
    const drawn = artifactBlock(activity, artifact, loadPatch);
    if (drawn) item.append(drawn);
  }
  return { item, time, ms };
}

function activityBody(activity) {
  switch (activity.kind) {
    case 'planGenerated':
      return planSteps(activity.plan);
    case 'agentMessaged':
    case 'userMessaged':
      return activity.message ? el('p', { class: 'bubble', text: activity.message }) : null;
    case 'progressUpdated':
      return activity.title && activity.description
        ? el('p', { class: 'tl-text', text: activity.description })
        : null;
    case 'sessionFailed':
      return el('p', { class: 'tl-text reason', text: activity.reason || 'No reason given.' });
    default:
      return null;
  }
}

function artifactBlock(activity, artifact, loadPatch) {
  if (artifact.changeSet) return changeSetBlock(activity, artifact.changeSet, loadPatch);
  if (artifact.bashOutput) return bashBlock(artifact.bashOutput);
  if (artifact.media) {
    const { mimeType, size } = artifact.media;
    return el('p', {
      class: 'tl-media',
      text: `Media: ${mimeType || 'unknown type'}, ${formatBytes(size)}`,
    });
  }
  return null;
}

function counts(added, removed) {
  return [
    el('span', { class: 'added', text: `+${added}` }),
    el('span', { class: 'removed', text: `−${removed}` }),
  ];
}

function changeSetBlock(activity, changeSet, loadPatch) {
  const files = changeSet.files ?? [];
  const added = files.reduce((n, f) => n + (f.added || 0), 0);
  const removed = files.reduce((n, f) => n + (f.removed || 0), 0);
  const block = el(
    'div',
    { class: 'changes', 'data-testid': 'changes' },
    el(
      'p',
      { class: 'changes-head' },
      `${files.length} ${files.length === 1 ? 'file' : 'files'} changed `,
      ...counts(added, removed),
    ),
  );
  if (files.length) {
    block.append(
      el(
        'ul',
        { class: 'files' },
        ...files.map((f) =>
          el(
            'li',
            { 'data-testid': 'changed-file' },
            el('code', { text: f.path }),
            ' ',
            ...counts(f.added, f.removed),
          ),
        ),
      ),
    );
  }
  if (changeSet.commitMessage) {
    block.append(el('p', { class: 'commit', text: changeSet.commitMessage }));
  }
  const button = el('button', {
    type: 'button',
    class: 'button small',
    text: 'View patch',
    'data-testid': 'view-patch',
  });
  const status = el('p', { class: 'patch-status', role: 'status' });
  const view = el('div', { class: 'patch', 'data-testid': 'patch' });
  view.hidden = true;
  let loaded = false;
  button.addEventListener('click', async () => {
    if (loaded) {
      view.hidden = !view.hidden;
      button.textContent = view.hidden ? 'View patch' : 'Hide patch';
      return;
    }
    button.disabled = true;
    setText(status, 'Loading the patch…');
    const answer = await loadPatch(activity);
    button.disabled = false;
    if (!answer.ok) {
      setText(
        status,
        `Could not load the patch: ${answer.message || answer.code}. Click to try again.`,
      );
      status.classList.add('error');
      return;
    }
    status.classList.remove('error');
    const patches = answer.body.patches ?? [];
    setText(status, patches.length ? '' : 'Jules sent no patch for this change.');
    // The change set's own commit message is shown above already: not again per patch.
    view.replaceChildren(...patches.map((patch) => patchBlock(patch, changeSet.commitMessage)));
    loaded = true;
    view.hidden = false;
    button.textContent = 'Hide patch';
  });
  block.append(button, status, view);
  return block;
}

/** One unified diff, line by line, so additions and removals can be told apart. */
function patchBlock(patch, shownMessage) {
  const lines = String(patch.unidiffPatch || '').split('\n');
  if (lines.at(-1) === '') lines.pop();
  const pre = el('pre', { class: 'diff' });
  const shown = lines.slice(0, PATCH_LINES_SHOWN);
  for (const line of shown) {
    let kind = 'context';
    if (
      line.startsWith('+++') ||
      line.startsWith('---') ||
      /^(diff|index|new file|deleted file|similarity|rename) /.test(line)
    ) {
      kind = 'meta';
    } else if (line.startsWith('@@')) kind = 'hunk';
    else if (line.startsWith('+')) kind = 'add';
    else if (line.startsWith('-')) kind = 'del';
    pre.append(el('span', { class: `line ${kind}`, text: `${line}\n` }));
  }
  const block = el('div', { class: 'patch-file' });
  if (patch.suggestedCommitMessage && patch.suggestedCommitMessage !== shownMessage) {
    block.append(el('p', { class: 'commit', text: patch.suggestedCommitMessage }));
  }
  block.append(pre);
  if (lines.length > shown.length) {
    block.append(
      el('p', {
        class: 'muted',
        text: `${(lines.length - shown.length).toLocaleString()} more lines not shown.`,
      }),
    );
  }
  return block;
}

function bashBlock(bash) {
  const exit = bash.exitCode ?? null;
  const summary = el(
    'summary',
    {},
    el('code', { text: `$ ${bash.command || ''}` }),
    exit === null
      ? ''
      : el('span', { class: exit === 0 ? 'exit ok' : 'exit failed', text: ` exit ${exit}` }),
  );
  const details = el('details', { class: 'bash' }, summary);
  const output = el('pre', { class: 'bash-output', text: bash.output || '(no output)' });
  details.append(output);
  if (bash.truncated)
    details.append(el('p', { class: 'muted', text: 'Only the end of the output is kept.' }));
  return details;
}
