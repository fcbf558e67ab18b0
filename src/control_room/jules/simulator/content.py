"""What simulated sessions are about: repositories, tasks, plans, patches and command output.

Pure builders over a `random.Random`, so a seed gives the same content. The shapes are the
real API's: a plan `{id, steps[{id, title, description, index}], createTime}`, a `changeSet
{source, gitPatch {unidiffPatch, baseCommitId, suggestedCommitMessage}}` whose patch is a
well-formed unified diff (hunk headers agree with their lines), `bashOutput {command, output,
exitCode}`, and `media {data (base64), mimeType}`.
"""

from __future__ import annotations

import base64
import functools
import random
from dataclasses import dataclass
from typing import Any, Final

Resource = dict[str, Any]
"""A resource exactly as it goes on the wire. Treat it as read-only."""

SOURCE_PREFIX: Final = "sources/github/"
# Distinct patches (and command outputs) per task and source: enough that neighbouring
# sessions differ, few enough to build once and share.
ARTIFACT_VARIANTS: Final = 8


@dataclass(frozen=True, slots=True)
class Repo:
    """A GitHub repository connected to the simulated account."""

    full_name: str  # owner/repo
    branches: tuple[str, ...]  # the first is the default branch
    private: bool = False


@dataclass(frozen=True, slots=True)
class Task:
    """Something a user asks Jules to do, with the plan and files the work will touch."""

    title: str
    prompt: str
    steps: tuple[str, ...]
    files: tuple[str, ...]
    command: str  # what the agent runs to check its work


REPOS: Final = (
    Repo("acme/web-app", ("main", "develop")),
    Repo("acme/payments-api", ("main", "release/2.4"), private=True),
    Repo("acme/mobile", ("main",), private=True),
    Repo("globex/data-pipeline", ("main", "staging")),
    Repo("globex/infra", ("main",), private=True),
    Repo("initech/tps-reports", ("master",)),
)

TASKS: Final = (
    Task(
        "Fix flaky login test",
        "The login e2e test fails one run in ten; find the race and fix it.",
        ("Reproduce the flaky run", "Find the race in the session setup", "Await the cookie"),
        ("src/auth/login.py", "tests/test_login.py"),
        "pytest -q tests/test_login.py",
    ),
    Task(
        "Add dark mode toggle",
        "Add a dark mode toggle to the settings page, stored per user.",
        ("Add a theme preference to the user model", "Add the toggle", "Apply the theme"),
        ("src/settings/Theme.tsx", "src/settings/preferences.ts", "src/styles/dark.css"),
        "npm test -- settings",
    ),
    Task(
        "Upgrade to Python 3.12",
        "Upgrade the project to Python 3.12 and fix what breaks.",
        ("Bump the interpreter in CI", "Replace removed APIs", "Run the whole suite"),
        ("pyproject.toml", ".github/workflows/ci.yml", "src/compat.py"),
        "python3.12 -m pytest -q",
    ),
    Task(
        "Paginate the orders endpoint",
        "GET /orders returns everything; add cursor pagination.",
        ("Design the cursor", "Page the query", "Return nextPageToken", "Test the edges"),
        ("src/api/orders.py", "src/db/queries.py", "tests/test_orders.py"),
        "pytest -q tests/test_orders.py",
    ),
    Task(
        "Write tests for the CSV exporter",
        "The CSV exporter has no tests; cover the edge cases.",
        ("Read the exporter", "Cover quoting and empty rows", "Cover unicode"),
        ("tests/test_csv_export.py", "src/export/csv.py"),
        "pytest -q tests/test_csv_export.py",
    ),
    Task(
        "Remove deprecated config keys",
        "Drop the config keys deprecated in 2.0 and their shims.",
        ("List the deprecated keys", "Remove the shims", "Update the docs"),
        ("src/config.py", "docs/configuration.md"),
        "pytest -q tests/test_config.py",
    ),
    Task(
        "Speed up the nightly ETL",
        "The nightly ETL takes 4 hours; profile it and cut the time.",
        ("Profile a run", "Batch the inserts", "Parallelise the extract", "Compare timings"),
        ("etl/load.py", "etl/extract.py", "etl/settings.yml"),
        "python -m etl.bench --rows 100000",
    ),
    Task(
        "Document the retry policy",
        "Write docs for how the client retries and backs off.",
        ("Read the client's retry code", "Write the page", "Link it from the README"),
        ("docs/retries.md", "README.md"),
        "mkdocs build --strict",
    ),
    Task(
        "Fix timezone bug in reports",
        "Reports show UTC times to users in other zones; fix it.",
        ("Find where times are formatted", "Use the user's zone", "Test around DST"),
        ("src/reports/render.py", "tests/test_reports.py"),
        "pytest -q tests/test_reports.py",
    ),
    Task(
        "Migrate CI to GitHub Actions",
        "Move the Jenkins pipeline to GitHub Actions workflows.",
        ("Translate the Jenkinsfile", "Cache dependencies", "Remove Jenkins"),
        (".github/workflows/ci.yml", "Jenkinsfile"),
        "act -j test",
    ),
    Task(
        "Add rate limiting to the API",
        "Add per-key rate limiting to the public API.",
        ("Pick a token bucket", "Add the middleware", "Return 429 with Retry-After"),
        ("src/api/ratelimit.go", "src/api/server.go", "src/api/ratelimit_test.go"),
        "go test ./src/api/...",
    ),
    Task(
        "Bump dependencies",
        "Update all dependencies to their latest minor versions.",
        ("Update the lock file", "Fix the two breaking changes", "Run the suite"),
        ("package.json", "package-lock.json", "src/index.ts"),
        "npm test",
    ),
)

QUESTIONS: Final = (
    "Should the change keep backwards compatibility with the old API?",
    "Which of the two failing tests is the intended behaviour?",
    "May I add a new dependency for this?",
    "The README and the code disagree on the default; which one is right?",
)
ANSWERS: Final = ("Yes, go ahead.", "Keep it compatible, please.", "The code is right.")
FOLLOW_UPS: Final = (
    "One more thing: please also update the changelog.",
    "Can you rename the new function to something clearer?",
    "The CI lint step fails on your change; please fix it.",
)
FAILURE_REASONS: Final = (
    "The build failed and could not be fixed.",
    "Could not clone the repository.",
    "The task needs access the agent does not have.",
    "The test suite did not finish within the time limit.",
)
PROGRESS_NOTES: Final = (
    "Read {file} and the code around it.",
    "Changed {file}; the tests that cover it pass.",
    "Ran `{command}` to check the change.",
    "Updated {file} and its callers.",
)

# A 1x1 transparent PNG: media artifacts carry real image bytes, just very few of them.
PIXEL_PNG: Final = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
        "0000000b4944415478da636000020000050001e9fadcd80000000049454e44ae426082"
    )
).decode("ascii")

# Lines a patch is made of, by file extension: (context, removed, added).
_Snippet = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]
_SNIPPETS: Final[dict[str, _Snippet]] = {
    ".py": (
        ("def handle(request):", "    session = request.session", "    return render(session)"),
        ("    time.sleep(0.5)", "    value = cache.get(key)"),
        ("    await session.ready()", "    value = cache.get(key, default=None)", "    # ok"),
    ),
    ".ts": (
        ("export function load() {", "  const prefs = readPrefs();", "  return prefs;", "}"),
        ("  const theme = 'light';",),
        ("  const theme = prefs.theme ?? 'light';", "  document.body.dataset.theme = theme;"),
    ),
    ".tsx": (
        ("export function Theme() {", "  const [dark, setDark] = useState(false);", "  return ("),
        ("    <div>",),
        ("    <div className={dark ? 'dark' : 'light'}>", "      <Toggle onChange={setDark} />"),
    ),
    ".go": (
        ("func (s *Server) routes() {", "\tmux := http.NewServeMux()", "\treturn mux"),
        ('\tmux.Handle("/", s.api)',),
        ('\tmux.Handle("/", s.limiter.Wrap(s.api))', "\ts.limiter.Start(ctx)"),
    ),
    ".md": (
        ("## Configuration", "", "Settings are read from the environment."),
        ("The client retries forever.",),
        ("The client retries 5 times, doubling the wait from 1 s up to 30 s.", ""),
    ),
}
_DEFAULT_SNIPPET: Final[_Snippet] = (
    ("# settings", "version: 2", "jobs:"),
    ("  python: '3.11'",),
    ("  python: '3.12'", "  cache: pip"),
)


def hex_id(rng: random.Random, digits: int = 32) -> str:
    """A random lowercase hex string (activity ids are 32 hex characters, commits 40)."""
    return f"{rng.getrandbits(digits * 4):0{digits}x}"


def plan(rng: random.Random, steps: tuple[str, ...], stamp: str) -> Resource:
    """A plan: an id, numbered steps with a title and a description, and its createTime."""
    return {
        "id": hex_id(rng, 16),
        "steps": [
            {
                "id": hex_id(rng, 8),
                "title": title,
                "description": f"{title}, then check it before moving on.",
                "index": index,
            }
            for index, title in enumerate(steps)
        ],
        "createTime": stamp,
    }


def progress_note(rng: random.Random, task: Task) -> str:
    """The description of a progressUpdated activity."""
    return rng.choice(PROGRESS_NOTES).format(file=rng.choice(task.files), command=task.command)


def unified_diff(rng: random.Random, path: str, *, new_file: bool = False) -> str:
    """A well-formed unified diff of one file: headers, one hunk whose counts match its lines."""
    extension = path[path.rfind(".") :] if "." in path.rpartition("/")[2] else ""
    context, removed, added = _SNIPPETS.get(extension, _DEFAULT_SNIPPET)
    before, after = hex_id(rng, 7), hex_id(rng, 7)
    lines = [f"diff --git a/{path} b/{path}"]
    if new_file:
        lines += [
            "new file mode 100644",
            f"index 0000000..{after}",
            "--- /dev/null",
            f"+++ b/{path}",
            f"@@ -0,0 +1,{len(context) + len(added)} @@",
        ]
        lines += [f"+{line}" for line in (*context, *added)]
        return "\n".join(lines) + "\n"
    start = rng.randint(1, 200)
    lead, trail = context[:-1], context[-1:]
    old_count = len(lead) + len(removed) + len(trail)
    new_count = len(lead) + len(added) + len(trail)
    lines += [
        f"index {before}..{after} 100644",
        f"--- a/{path}",
        f"+++ b/{path}",
        f"@@ -{start},{old_count} +{start},{new_count} @@",
    ]
    lines += [f" {line}" for line in lead]
    lines += [f"-{line}" for line in removed]
    lines += [f"+{line}" for line in added]
    lines += [f" {line}" for line in trail]
    return "\n".join(lines) + "\n"


def change_set(rng: random.Random, task: Task, source: str | None) -> Resource:
    """A changeSet touching one to three of the task's files (test files are new files).

    One of `ARTIFACT_VARIANTS` per task and source, built once and shared (read-only): an
    account of thousands of sessions is built in a fraction of a second that way.
    """
    return _change_set(task, source, rng.randrange(ARTIFACT_VARIANTS))


@functools.cache
def _change_set(task: Task, source: str | None, variant: int) -> Resource:
    change: Resource = {"gitPatch": _git_patch(task, variant)}
    return change if source is None else {"source": source, **change}


@functools.cache
def _git_patch(task: Task, variant: int) -> Resource:
    rng = random.Random(f"{task.title}|patch|{variant}")
    count = rng.randint(1, min(3, len(task.files)))
    paths = rng.sample(task.files, count)
    patch = "".join(
        unified_diff(rng, path, new_file=path.startswith("tests/") and rng.random() < 0.5)
        for path in paths
    )
    return {
        "unidiffPatch": patch,
        "baseCommitId": hex_id(rng, 40),
        "suggestedCommitMessage": f"{task.title}\n\n{task.prompt}",
    }


def bash_output(rng: random.Random, task: Task) -> Resource:
    """A command the agent ran and what it printed; now and then it failed (shared, as above)."""
    return _bash_output(task, rng.randrange(ARTIFACT_VARIANTS))


@functools.cache
def _bash_output(task: Task, variant: int) -> Resource:
    rng = random.Random(f"{task.title}|bash|{variant}")
    if rng.random() < 0.2:
        output = f"$ {task.command}\nF..\nFAILED: 1 failed, 2 passed in 0.{rng.randint(10, 99)}s"
        return {"command": task.command, "output": output, "exitCode": 1}
    passed = rng.randint(3, 240)
    dots = "." * min(passed, 60)
    output = f"$ {task.command}\n{dots}\n{passed} passed in {rng.random() * 9:.2f}s"
    return {"command": task.command, "output": output, "exitCode": 0}


def media() -> Resource:
    """An image the agent attached (a screenshot, in real sessions)."""
    return {"data": PIXEL_PNG, "mimeType": "image/png"}


def source_resource(repo: Repo) -> Resource:
    """A Source as sources.list returns it."""
    owner, _, name = repo.full_name.partition("/")
    return {
        "name": f"{SOURCE_PREFIX}{repo.full_name}",
        "id": f"github/{repo.full_name}",
        "githubRepo": {
            "owner": owner,
            "repo": name,
            "isPrivate": repo.private,
            "defaultBranch": {"displayName": repo.branches[0]},
            "branches": [{"displayName": branch} for branch in repo.branches],
        },
    }
