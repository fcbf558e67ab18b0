"""The `variants` section of `make bench`: wire variants and views at 1,000 clients.

Issue 13 asks what each wire variant costs, measured in the same run as the Node `ws`
peer; issue 12 §2 what 1,000 clients spread over 10 views cost. Every run here is one
`bench.run.traffic` run (separate load-generator processes, server CPU from /proc), so its
figures read like the broadcast and fan-out tables:

- **broadcast alone** (`publish`: 100 deltas of ~1.1 KB at 20/s, one per broadcast) for the
  CPU comparisons: the control room with every client on one variant (plain, deflate,
  msgpack, patch), with a mix of four (plain, deflate, msgpack, patch+batch, client by
  client), and with its clients over 1 or 10 views (`bench.workload.view_params`): 10
  views that each admit every delta (ten frame builds per broadcast for the same
  deliveries: the worst case) and 10 views that each admit a tenth (ten deltas per
  broadcast, one per repository, each client getting one). node-ws plain, and node-ws with
  `ws`'s own permessage-deflate (compressing once per client), in the same rounds.
- **fan-out** (`poll`: the bench upstream's 250 sessions, 5 changed every 250 ms) for bytes
  on the wire on realistic deltas: different sessions, repositories and pull requests from
  one message to the next, as a real account's are (the broadcast's deltas all describe
  one session, which flatters a compressor that keeps its context between messages).

The broadcast runs are repeated in interleaved rounds (every run once per round, minutes
apart at most), and each comparison is the median over rounds of the ratio within a round,
so a change in the machine's load between rounds moves both sides of a ratio together.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from bench import run as bench
from bench.loadgen import raise_file_limit
from bench.run import Load, Suite
from control_room.tasks import run_loop

VARIANT_CLIENTS: Final = 1_000  # the issues state their goals at 1,000 clients
VARIANT_ROUNDS: Final = 3  # a median needs three; a round of the broadcast runs is ~2 min
VIEWS: Final = 10  # issue 12 §2: "1,000 clients spread over 10 different views"
DEFLATE_CPU_GOAL: Final = 1.3  # issue 13: all-deflate ≤ 1.3× all-plain, CPU per delivery
MIX_CPU_GOAL: Final = 1.2  # issue 13: a mix of four variants ≤ 1.2× one variant


@dataclass(frozen=True)
class Run:
    """One measured configuration: `key` names it in the report, per server."""

    key: str
    server: str
    mode: str  # "publish" (broadcast alone) or "poll" (fan-out)
    load: Load
    label: str


def _run(server: str, mode: str, key: str, label: str, *loadgen: str, **options: Any) -> Run:
    tag = ("fanout-" if mode == "poll" else "") + key.replace("+", "-")
    return Run(key, server, mode, Load(tag=tag, loadgen=loadgen, **options), label)


CR: Final = "control-room"
NODE: Final = "node-ws"
NODE_DEFLATE: Final = (("PER_MESSAGE_DEFLATE", "1"),)
ALL_VIEWS: Final = ("--views", str(VIEWS), "--view-mode", "all")
SPLIT_VIEWS: Final = ("--views", str(VIEWS), "--view-mode", "split")

# fmt: off
BROADCAST_RUNS: Final = (
    _run(CR, "publish", "plain", "JSON text frames, uncompressed"),
    _run(CR, "publish", "deflate", "permessage-deflate, compressed once per broadcast",
         "--variant", "deflate"),
    _run(CR, "publish", "msgpack", "MessagePack binary frames", "--variant", "msgpack"),
    _run(CR, "publish", "patch", "`updates=patch`: JSON Patch `updated` deltas",
         "--variant", "patch"),
    _run(CR, "publish", "patch+batch",
         "`updates=patch&batch=1`: each broadcast as one `batch` of JSON Patch deltas",
         "--variant", "patch+batch"),
    _run(CR, "publish", "mix", "a quarter each: plain, deflate, msgpack, patch+batch",
         "--variant", "mix"),
    _run(CR, "publish", "views-1", "1 filtered view (`repository=`), admitting every delta",
         "--views", "1", "--view-mode", "all"),
    _run(CR, "publish", "views-10", f"{VIEWS} distinct views, each admitting every delta",
         *ALL_VIEWS),
    _run(CR, "publish", "views-10-split",
         f"{VIEWS} views, each admitting a tenth ({VIEWS} deltas per broadcast, one each)",
         *SPLIT_VIEWS, repositories=VIEWS, share=1 / VIEWS),
    _run(NODE, "publish", "plain", "JSON text frames, uncompressed"),
    _run(NODE, "publish", "deflate", "`ws` permessage-deflate: compressed per client, "
         "context kept", "--variant", "deflate", env=NODE_DEFLATE),
)
"""Broadcast alone: the CPU comparisons, repeated in rounds."""

EXTRA_RUNS: Final = (
    _run(CR, "publish", "views-10-block", f"{VIEWS} views, each admitting every delta, each "
         "view's clients connected one after another", *ALL_VIEWS, "--spread", "block"),
    _run(CR, "publish", "mix-block", "the mix, each variant's clients connected one after "
         "another", "--variant", "mix", "--spread", "block"),
)
"""Run only when named (`--keys`): the same groups with their clients neighbours in
connection order, to tell the cost of more groups from the cost of visiting clients out of
the order they were allocated in."""

FANOUT_RUNS: Final = (
    _run(CR, "poll", "plain", "JSON, uncompressed"),
    _run(CR, "poll", "deflate", "permessage-deflate, no context takeover",
         "--variant", "deflate"),
    _run(NODE, "poll", "plain", "JSON, uncompressed"),
    _run(NODE, "poll", "deflate", "permessage-deflate, context kept per client",
         "--variant", "deflate", env=NODE_DEFLATE),
)
"""Fan-out of realistic deltas: bytes on the wire, once."""
# fmt: on

MIX_PARTS: Final = "mix-parts"
"""The mean CPU per delivery of the mix's four variants, each run alone in the same round:
the mix's clients get smaller messages on average than plain ones (patch, deflate), so
this is what the mix would cost if serving four variants at once cost nothing extra."""
MIX_OF: Final = ("plain", "deflate", "msgpack", "patch+batch")

RATIOS: Final = (
    # (figure, numerator run, denominator run, goal or None)
    ("deflate ÷ plain", "deflate", "plain", DEFLATE_CPU_GOAL),
    ("msgpack ÷ plain", "msgpack", "plain", None),
    ("patch ÷ plain", "patch", "plain", None),
    ("mix of four ÷ plain", "mix", "plain", MIX_CPU_GOAL),
    ("mix of four ÷ its four parts alone (mean)", "mix", MIX_PARTS, None),
    ("10 views, all admitted ÷ 1 view", "views-10", "views-1", None),
    ("10 views, a tenth each ÷ 1 view", "views-10-split", "views-1", None),
    ("10 views, clients in view order ÷ 1 view", "views-10-block", "views-1", None),
    ("mix, clients in variant order ÷ plain", "mix-block", "plain", None),
)
"""CPU per delivery comparisons within a round, control room (and node-ws where it has both)."""

MEDIAN_FIELDS: Final = (
    "cpu_per_100k",
    "cpu_util",
    "delivered",
    "lat_p50_ms",
    "lat_p99_ms",
    "last_p99_ms",
    "probe_p99_ms",
    "wire_bytes_per_delivery",
    "payload_bytes_per_delivery",
    "peak_rss_mib",
)


def median_figures(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over a run's rounds (errors left out); {} if none ran."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return {}
    out: dict[str, Any] = {f: statistics.median(r[f] for r in good) for f in MEDIAN_FIELDS}
    out.update(
        rounds=len(good),
        cut=sum(r["cut"] for r in good),
        worst_delivered=min(r["delivered"] for r in good),
        cpu_per_100k_all=[round(r["cpu_per_100k"], 4) for r in good],
        negotiated=good[-1].get("negotiated", {}),
        clients=good[-1]["clients"],
    )
    return out


def per_delivery(figures: dict[str, Any], kind: str) -> float:
    """Server CPU s per 100,000 deliveries: `all` of it, or only its `user` (Python) part.

    The user part leaves out the kernel's loopback TCP path, which is most of the cost and
    moves with how busy the receiving processes are; what a variant adds is Python work.
    """
    total: float = figures["cpu_per_100k"]
    if kind == "all" or not figures.get("cpu_s"):
        return total
    share: float = figures["cpu_user_s"] / figures["cpu_s"]
    return total * share


def mix_parts(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per round, the mean CPU per delivery (all, user) of the mix's four variants alone."""
    out: list[dict[str, Any]] = []
    parts = [runs.get(key, []) for key in MIX_OF]
    for in_round in zip(*parts, strict=False):
        if any("error" in f for f in in_round) or len(in_round) < len(MIX_OF):
            out.append({"error": "a part failed"})
            continue
        total = statistics.mean(per_delivery(f, "all") for f in in_round)
        user = statistics.mean(per_delivery(f, "user") for f in in_round)
        out.append({"cpu_per_100k": total, "cpu_s": 1.0, "cpu_user_s": user / total})
    return out


def paired_ratio(
    runs: dict[str, list[dict[str, Any]]], top: str, bottom: str, kind: str = "all"
) -> tuple[float, list[float]]:
    """Median over rounds of `top`'s CPU per delivery ÷ `bottom`'s in the same round
    (`kind`: all of the CPU, or its user part)."""
    ratios = []
    bottoms = mix_parts(runs) if bottom == MIX_PARTS else runs.get(bottom, [])
    for a, b in zip(runs.get(top, []), bottoms, strict=False):
        if "error" in a or "error" in b or not per_delivery(b, kind):
            continue
        ratios.append(per_delivery(a, kind) / per_delivery(b, kind))
    return (statistics.median(ratios) if ratios else 0.0), [round(r, 3) for r in ratios]


async def measure(
    suite: Suite, rounds: int, *, fanout: bool = True, keys: Sequence[str] = ()
) -> dict[str, Any]:
    """Every variant run (or those of `keys`), the broadcast ones `rounds` times
    interleaved; the report section."""
    servers = set(suite.servers)
    wanted = set(keys)
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}

    async def one(spec: Run, label: str) -> dict[str, Any]:
        async def go() -> dict[str, Any]:
            figures: dict[str, Any] = await bench.traffic(
                suite, spec.server, VARIANT_CLIENTS, spec.mode, workload=spec.load
            )
            return figures

        return await bench.guarded(label, suite.notes, go)

    for i in range(rounds):
        print(f"  round {i + 1} of {rounds}", flush=True)
        for spec in (*BROADCAST_RUNS, *EXTRA_RUNS):
            if spec.server not in servers or (wanted and spec.key not in wanted):
                continue
            if spec in EXTRA_RUNS and spec.key not in wanted:
                continue
            figures = await one(spec, f"{spec.server} {spec.key}")
            raw.setdefault(spec.server, {}).setdefault(spec.key, []).append(figures)
    fan: dict[str, dict[str, dict[str, Any]]] = {}
    if fanout:
        print("  fan-out, realistic deltas", flush=True)
        for spec in FANOUT_RUNS:
            if spec.server in servers and (not wanted or f"fanout-{spec.key}" in wanted):
                label = f"{spec.server} fan-out {spec.key}"
                fan.setdefault(spec.server, {})[spec.key] = await one(spec, label)
    broadcast = {
        server: {key: median_figures(runs) for key, runs in by_key.items()}
        for server, by_key in raw.items()
    }
    ratios: dict[str, dict[str, Any]] = {}
    for server, by_key in raw.items():
        for figure, top, bottom, goal in RATIOS:
            if top in by_key and (bottom in by_key or bottom == MIX_PARTS):
                median, each = paired_ratio(by_key, top, bottom)
                user, user_each = paired_ratio(by_key, top, bottom, "user")
                ratios.setdefault(server, {})[figure] = {
                    "median": median,
                    "rounds": each,
                    "user_median": user,
                    "user_rounds": user_each,
                    "goal": goal,
                }
    return {
        "clients": VARIANT_CLIENTS,
        "rounds": rounds,
        "broadcast": broadcast,
        "ratios": ratios,
        "fanout": fan,
        "raw": raw,
    }


# ----------------------------------------------------------------------------- report


def _labels() -> dict[tuple[str, str, str], str]:
    runs = (*BROADCAST_RUNS, *EXTRA_RUNS, *FANOUT_RUNS)
    return {(r.server, r.mode, r.key): r.label for r in runs}


def broadcast_table(section: dict[str, Any]) -> list[str]:
    """One row per (server, run): medians over rounds, CPU relative to the same plain."""
    labels = _labels()
    header = [
        "server", "clients get", "CPU s /100k (median)", "×plain", "each round",
        "delivered", "cut", "p99 ms", "last-client p99 ms", "bytes/delivery on the wire",
        "uncompressed", "server CPU", "peak RSS MiB", "negotiated",
    ]  # fmt: skip
    rows: list[list[object]] = []
    for server, by_key in section["broadcast"].items():
        plain = by_key.get("plain", {}).get("cpu_per_100k", 0)
        for key, f in by_key.items():
            if not f:
                rows.append([server, labels.get((server, "publish", key), key), "error"])
                continue
            rows.append(
                [
                    server,
                    labels.get((server, "publish", key), key),
                    f"{f['cpu_per_100k']:.3f}",
                    bench.ratio(f["cpu_per_100k"], plain),
                    " / ".join(f"{c:.3f}" for c in f["cpu_per_100k_all"]),
                    f"{f['worst_delivered']:.2%}",
                    f["cut"],
                    f"{f['lat_p99_ms']:.1f}",
                    f"{f['last_p99_ms']:.1f}",
                    f"{f['wire_bytes_per_delivery']:,.0f}",
                    f"{f['payload_bytes_per_delivery']:,.0f}",
                    f"{f['cpu_util']:.0%}",
                    f"{f['peak_rss_mib']:.0f}",
                    ", ".join(f"{k} {v:,}" for k, v in sorted(f["negotiated"].items())),
                ]
            )
    return bench.table(header, rows)


def ratio_table(section: dict[str, Any]) -> list[str]:
    """The CPU comparisons: median over rounds of the ratio within a round, and the goal."""
    header = [
        "server", "CPU per delivery", "median ratio", "each round", "goal", "verdict",
        "user CPU only: median", "each round",
    ]  # fmt: skip
    rows: list[list[object]] = []
    for server, figures in section["ratios"].items():
        for figure, r in figures.items():
            goal = r["goal"] if server == "control-room" else None  # the goals are ours
            verdict = "" if goal is None else ("met" if r["median"] <= goal else "**not met**")
            rows.append(
                [
                    server,
                    figure,
                    f"{r['median']:.2f}×",
                    " / ".join(f"{x:.2f}" for x in r["rounds"]),
                    "" if goal is None else f"≤ {goal}×",
                    verdict,
                    f"{r.get('user_median', 0):.2f}×",
                    " / ".join(f"{x:.2f}" for x in r.get("user_rounds", [])),
                ]
            )
    return bench.table(header, rows)


def fanout_table(section: dict[str, Any]) -> list[str]:
    """Bytes per delivery on realistic deltas, plain and deflate, each server."""
    labels = _labels()
    header = [
        "server", "clients get", "bytes/delivery on the wire", "uncompressed", "÷ plain",
        "delivered", "CPU s /100k", "negotiated",
    ]  # fmt: skip
    rows: list[list[object]] = []
    for server, by_key in section["fanout"].items():
        plain = by_key.get("plain", {}).get("wire_bytes_per_delivery", 0)
        for key, f in by_key.items():
            if "error" in f:
                rows.append([server, key, f"error: {f['error']}"])
                continue
            rows.append(
                [
                    server,
                    labels.get((server, "poll", key), key),
                    f"{f['wire_bytes_per_delivery']:,.0f}",
                    f"{f['payload_bytes_per_delivery']:,.0f}",
                    bench.ratio(f["wire_bytes_per_delivery"], plain),
                    f"{f['delivered']:.2%}",
                    f"{f['cpu_per_100k']:.3f}",
                    ", ".join(f"{k} {v:,}" for k, v in sorted(f.get("negotiated", {}).items())),
                ]
            )
    return bench.table(header, rows)


def markdown(section: dict[str, Any]) -> list[str]:
    """The section's tables for latest.md."""
    lines = [
        f"## Wire variants and views ({section['clients']:,} clients; broadcast alone, "
        f"median of {section['rounds']} interleaved rounds)",
        "",
        *broadcast_table(section),
        "",
        "### CPU per delivery, compared within each round",
        "",
        *ratio_table(section),
        "",
    ]
    if section["fanout"]:
        lines += [
            "### Bytes on the wire per delivery, realistic deltas (fan-out of the bench upstream)",
            "",
            *fanout_table(section),
            "",
        ]
    return lines


def goals(section: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(figure, target, measured, met) for the issue-13 goals this section measures."""
    out: list[tuple[str, str, str, bool]] = []
    ours = section["ratios"].get("control-room", {})
    for figure, _top, _bottom, target in RATIOS:
        r = ours.get(figure)
        if target is None or r is None or not r["rounds"]:
            continue
        out.append(
            (
                f"server CPU per delivery at {section['clients']:,} clients, {figure}",
                f"≤ {target}×",
                f"{r['median']:.2f}× (rounds: {', '.join(f'{x:.2f}' for x in r['rounds'])})",
                r["median"] <= target,
            )
        )
    runs = [
        f
        for by_key in section["raw"].get("control-room", {}).values()
        for f in by_key
        if "error" not in f
    ]
    if runs:
        worst = min(f["delivered"] for f in runs)
        cuts = sum(f["cut"] for f in runs)
        out.append(
            (
                "deliveries completed, every variant and view run",
                "100 %, no client cut",
                f"{worst:.2%} in the worst of {len(runs)} runs, {cuts} cut",
                worst >= 1.0 and cuts == 0,
            )
        )
    return out


# ----------------------------------------------------------------------------- main


async def _main(args: argparse.Namespace) -> None:
    suite = Suite(
        servers=[s for s in args.servers.split(",") if s in bench.SERVERS],
        fanout_ns=[],
        broadcast_ns=[],
        idle_ns=[],
        diff_sizes=[],
    )
    upstream = await bench.start_upstream(suite)
    try:
        if args.profile:
            spec = next(r for r in BROADCAST_RUNS if r.key == args.profile and r.server == CR)
            raw = bench.RESULTS / f"profile-variant-{spec.load.tag}.txt"
            figures = await bench.traffic(
                suite, CR, VARIANT_CLIENTS, spec.mode, profile=raw, workload=spec.load
            )
            cpu, delivered = figures["cpu_per_100k"], figures["delivered"]
            print(f"CPU s /100k {cpu:.3f}, delivered {delivered:.2%}")
            print(bench.profile_summary(raw))
            return
        keys = [k for k in args.keys.split(",") if k]
        section = await measure(suite, args.rounds, fanout=args.fanout, keys=keys)
    finally:
        upstream.send_signal(signal.SIGTERM)
        await upstream.wait()
    (bench.RESULTS / "variants.json").write_text(json.dumps(section, indent=1) + "\n")
    print("\n".join(markdown(section)))
    for note in suite.notes:
        print(f"- {note}")


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.variants`: this section alone (also written to
    bench/results/variants.json), some of its runs, or one run profiled."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=VARIANT_ROUNDS)
    parser.add_argument("--keys", default="", help="runs to make, e.g. views-1,views-10")
    parser.add_argument("--fanout", action="store_true", help="the fan-out runs too")
    parser.add_argument("--servers", default="control-room,node-ws")
    parser.add_argument("--profile", default="", help="py-spy the control room in this run")
    args = parser.parse_args(argv)
    raise_file_limit()
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    run_loop(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
