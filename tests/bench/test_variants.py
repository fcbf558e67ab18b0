"""The variants section's arithmetic: medians over rounds, ratios within a round."""

from __future__ import annotations

from typing import Any

import pytest
from bench.variants import MIX_OF, MIX_PARTS, median_figures, paired_ratio, per_delivery


def run(cpu: float, user_share: float = 0.25, **more: Any) -> dict[str, Any]:
    figures = {
        "cpu_per_100k": cpu,
        "cpu_s": 4.0,
        "cpu_user_s": 4.0 * user_share,
        "cpu_util": 0.2,
        "delivered": 1.0,
        "lat_p50_ms": 1.0,
        "lat_p99_ms": 2.0,
        "last_p99_ms": 3.0,
        "probe_p99_ms": 2.0,
        "wire_bytes_per_delivery": 400.0,
        "payload_bytes_per_delivery": 1000.0,
        "peak_rss_mib": 50.0,
        "cut": 0,
        "clients": 1000,
    }
    figures.update(more)
    return figures


def test_a_ratio_is_taken_within_each_round_then_the_median() -> None:
    runs = {
        "plain": [run(1.0), run(2.0), run(1.0)],
        "deflate": [run(1.1), run(2.4), run(0.9)],  # the machine was busier in round 2
    }
    median, each = paired_ratio(runs, "deflate", "plain")
    assert each == [1.1, 1.2, 0.9]
    assert median == pytest.approx(1.1)


def test_a_failed_run_leaves_its_round_out() -> None:
    runs = {"plain": [run(1.0), {"error": "TimeoutError"}], "mix": [run(1.5), run(1.0)]}
    assert paired_ratio(runs, "mix", "plain") == (1.5, [1.5])


def test_user_time_ratio_leaves_the_kernel_out() -> None:
    runs = {"plain": [run(1.0, user_share=0.2)], "views-10": [run(1.0, user_share=0.3)]}
    assert per_delivery(runs["views-10"][0], "user") == pytest.approx(0.3)
    assert paired_ratio(runs, "views-10", "plain", "user")[0] == pytest.approx(1.5)


def test_the_mix_is_compared_with_the_mean_of_its_parts_in_the_same_round() -> None:
    runs = {key: [run(cpu)] for key, cpu in zip(MIX_OF, (1.0, 1.0, 1.2, 0.8), strict=True)}
    runs["mix"] = [run(1.1)]
    assert paired_ratio(runs, "mix", MIX_PARTS)[0] == pytest.approx(1.1)


def test_medians_skip_failed_rounds_and_count_every_cut() -> None:
    figures = median_figures([run(1.0, cut=1), {"error": "x"}, run(3.0), run(2.0)])
    assert figures["cpu_per_100k"] == 2.0
    assert figures["rounds"] == 3 and figures["cut"] == 1
    assert median_figures([{"error": "x"}]) == {}
