"""The bench's views, read by the service's own query parser and views."""

from __future__ import annotations

import pytest
from bench.broadcast_server import bench_session
from bench.workload import repository, view_params
from multidict import MultiDict

from control_room.broker.base import tag_of
from control_room.views import View
from control_room.ws.params import parse_view


def views_of(mode: str, n: int) -> list[View]:
    return [parse_view(MultiDict(view_params(mode, n, i))) for i in range(n)]


def test_all_mode_gives_distinct_views_that_each_admit_the_broadcast() -> None:
    views = views_of("all", 10)
    assert len(set(views)) == 10
    published = bench_session("bench 1 1", "IN_PROGRESS")  # the default broadcast's delta
    assert all(v.admits(published.id, tag_of(published)) for v in views)


def test_split_mode_gives_each_view_exactly_one_repository() -> None:
    views = views_of("split", 10)
    published = [bench_session("bench 1 1", "IN_PROGRESS", j) for j in range(10)]
    for i, view in enumerate(views):
        admitted = [s.repository for s in published if view.admits(s.id, tag_of(s))]
        assert admitted == [repository(i)]


def test_clients_cycle_through_the_views() -> None:
    assert view_params("split", 3, 4) == view_params("split", 3, 1)
    assert view_params("split", 3, 4) != view_params("split", 3, 2)


@pytest.mark.parametrize(("mode", "views"), [("nope", 1), ("all", 0)])
def test_a_bad_mode_or_count_is_refused(mode: str, views: int) -> None:
    with pytest.raises(ValueError, match="view"):
        view_params(mode, views, 0)
