"""The shell commands of the docs run as written, against a live `control-room demo`.

Every ```sh block of the README and of docs/ is either run here or says why not, on the
line before it:

    <!-- not-run: why -->          not run (needs a real Jules key, installs packages, ...)
    <!-- needs: jq -->             run only where these programs are installed
    <!-- runs-until-stopped -->    a command that streams: it must print and keep running,
                                   then stop cleanly on Ctrl-C (SIGINT)

Each block runs in bash (`-e -o pipefail`) the way a reader would run it after `make demo`
or `make setup`: in a directory with the project's `.venv`, with `LOCAL_TOKEN` set to the
demo's token and `PORT` to its port. The demo listens on a free port rather than 3001 (the
machine may be running other things), so `127.0.0.1:3001` in a block is read as that port.
"""

from __future__ import annotations

import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import MS

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
HOW_TO = ROOT / "docs" / "how-to"
SHELL = frozenset({"sh", "bash", "shell"})
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\s*$")
MARKER = re.compile(r"^<!--\s*(?P<kind>not-run|needs|runs-until-stopped)\b:?(?P<arg>.*?)-->\s*$")
TOKEN = "docs-test-token"
DOC_PORT = "3001"  # the port the docs are written for
START_S = 20_000 * MS  # a fresh interpreter and the demo's first polls, on a busy machine
RUN_S = 20_000 * MS  # a command that finishes: an interpreter start and one request
FIRST_LINE_S = 15_000 * MS  # a streaming command's first line: start, connect, a delta
# What would point the commands elsewhere than the demo, or change their output.
AMBIENT = ("LOCAL_TOKEN", "LOCAL_TOKEN_FILE", "PORT", "HOST", "NO_COLOR", "LOG_LEVEL")


@dataclass
class Block:
    """One fenced shell block of a page, with the markers on the lines above it."""

    page: Path
    line: int  # of the opening fence, 1-based
    text: str = ""
    not_run: str | None = None
    needs: list[str] = field(default_factory=list)
    streams: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def shell_blocks(page: Path) -> list[Block]:
    """The shell blocks of a page; markers that precede anything else are problems too."""
    blocks: list[Block] = []
    pending: list[tuple[int, re.Match[str]]] = []
    fenced: str | None = None  # the language of the block we are in
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        if fenced is not None:
            if line.startswith("```"):
                fenced = None
            elif fenced in SHELL:
                blocks[-1].text += line + "\n"
            continue
        marker = MARKER.match(line)
        if marker:
            pending.append((number, marker))
            continue
        fence = FENCE.match(line)
        if fence:
            fenced = fence["lang"]
        if fence and fenced in SHELL:
            blocks.append(Block(page, number))
            for at, found in pending:
                apply_marker(blocks[-1], found, at)
        else:
            for at, _ in pending:
                blocks.append(Block(page, at, problems=["a marker not right above a shell block"]))
        pending = []
    return blocks


def apply_marker(block: Block, found: re.Match[str], at: int) -> None:
    arg = found["arg"].strip()
    if found["kind"] == "not-run":
        if not arg:
            block.problems.append(f"line {at}: `not-run` without a reason")
        block.not_run = arg
    elif found["kind"] == "needs":
        block.needs = arg.split()
        if not block.needs:
            block.problems.append(f"line {at}: `needs` without a program")
    else:
        block.streams = True


BLOCKS = [block for page in PAGES for block in shell_blocks(page)]
RUNNABLE = [b for b in BLOCKS if not b.problems]


def test_every_shell_block_is_run_or_says_why_not() -> None:
    assert any(b.page.parent == HOW_TO for b in RUNNABLE), "no how-to shell block found"
    problems = [f"{b.id}: {p}" for b in BLOCKS for p in b.problems]
    for block in RUNNABLE:
        for line in block.text.replace("\\\n", " ").splitlines():  # one line per command
            # As written after `make demo`: the command is in .venv/bin, not on PATH.
            if "control-room" in shlex.split(line, comments=True):
                problems.append(f"{block.id}: `control-room` is not on PATH; use .venv/bin/")
    assert not problems, "\n".join(problems)


def test_markers_bind_to_the_shell_block_right_below_them(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```python\nprint('```sh is not a fence in here')\n```\n"
        "<!-- needs: jq websocat -->\n<!-- runs-until-stopped -->\n```sh\nwatch\n```\n"
        "<!-- not-run: no reason to -->\n```bash\nrm -rf /\n```\n"
        "<!-- not-run -->\n```js\nlet x;\n```\n```sh\ntrue\nfalse\n```\n"
    )
    found = [
        (b.line, b.text, b.not_run, b.needs, b.streams, b.problems) for b in shell_blocks(page)
    ]
    assert found == [
        (6, "watch\n", None, ["jq", "websocat"], True, []),
        (10, "rm -rf /\n", "no reason to", [], False, []),
        (13, "", None, [], False, ["a marker not right above a shell block"]),
        (17, "true\nfalse\n", None, [], False, []),
    ]


# A subprotocol offer in an example: a header, `new WebSocket(...)`, a `subprotocols=`.
OFFER = re.compile(r"Sec-WebSocket-Protocol|WebSocket\(|subprotocols|protocols=")


def test_every_client_example_offers_the_app_protocol_first() -> None:
    """Offering only `bearer.<token>` makes the server select it: the token comes back."""
    wrong = []
    for page in PAGES:
        fenced = False
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if line.startswith("```"):
                fenced = not fenced
            elif fenced and "bearer." in line and OFFER.search(line):
                before = line[: line.index("bearer.")]
                if "control-room.v1" not in before:
                    wrong.append(f"{page.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not wrong, "offer control-room.v1 before bearer.<token>:\n" + "\n".join(wrong)


@dataclass(frozen=True)
class Demo:
    port: int
    workdir: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """`control-room demo` on a free port, and a directory laid out like a fresh clone."""
    workdir = tmp_path_factory.mktemp("clone")
    venv = Path(sys.executable).parent.parent
    (workdir / ".venv").symlink_to(venv, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k not in AMBIENT}
    log = workdir / "demo.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(workdir / ".venv" / "bin" / "control-room"), "demo", "--tick", "0.2"],
            env={**env, "PORT": "0", "LOCAL_TOKEN": TOKEN, "POLL_INTERVAL_MS": "200"},
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_S
        found = None
        while found is None and time.monotonic() < deadline and proc.poll() is None:
            found = re.search(r"Dashboard : http://127\.0\.0\.1:(\d+)/", log.read_text())
            time.sleep(0.05)
        assert found, f"the demo did not start:\n{log.read_text()}"
        port = int(found[1])
        yield Demo(port, workdir, {**env, "LOCAL_TOKEN": TOKEN, "PORT": str(port)})
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=START_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_shell_block_runs_as_written(block: Block, demo: Demo) -> None:
    if block.not_run is not None:
        pytest.skip(f"{block.id}: not run: {block.not_run}")
    missing = [program for program in block.needs if shutil.which(program) is None]
    if missing:
        pytest.skip(f"{block.id}: needs {', '.join(missing)}, which is not installed")
    script = block.text.replace(f"127.0.0.1:{DOC_PORT}", f"127.0.0.1:{demo.port}")
    command = ["bash", "-e", "-o", "pipefail", "-c", script]
    if block.streams:
        streams_until_stopped(command, demo)
    else:
        done = subprocess.run(
            command, cwd=demo.workdir, env=demo.env, capture_output=True, text=True, timeout=RUN_S
        )
        assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"


def streams_until_stopped(command: list[str], demo: Demo) -> None:
    """The command prints a first line and keeps running; Ctrl-C then stops it cleanly."""
    proc = subprocess.Popen(
        command,
        cwd=demo.workdir,
        env=demo.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # Ctrl-C reaches every process of a pipeline, as in a shell
    )
    assert proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], FIRST_LINE_S)
        first = proc.stdout.readline() if ready else b""
        running = proc.poll() is None
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=RUN_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    said = f"\nstdout: {first.decode()}{out.decode()}\nstderr: {err.decode()}"
    assert first.strip(), f"nothing printed within {FIRST_LINE_S:.0f} s{said}"
    assert running, f"it stopped by itself (exit {proc.returncode}){said}"
    # 130 is the shell's "ended by SIGINT" (a pipeline's last command, e.g. jq).
    assert proc.returncode in (0, 130, -signal.SIGINT), f"exit {proc.returncode}{said}"
