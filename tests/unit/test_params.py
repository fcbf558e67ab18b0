"""WebSocket query parameters: live only, snapshot, resume; clear errors otherwise."""

from __future__ import annotations

import pytest

from control_room.models import Position
from control_room.ws.params import BadParameter, StreamRequest, parse_stream_request

HERE = Position("e1", 10)


def test_no_parameters_means_live_only() -> None:
    assert parse_stream_request({}, HERE) == StreamRequest()


def test_snapshot_and_resume() -> None:
    assert parse_stream_request({"snapshot": "1"}, HERE) == StreamRequest(snapshot=True)
    assert parse_stream_request({"since": "4", "epoch": "e1"}, HERE) == StreamRequest(4, "e1")


def test_since_from_another_epoch_may_be_ahead() -> None:
    assert parse_stream_request({"since": "99", "epoch": "old"}, HERE) == StreamRequest(99, "old")


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ({"since": "abc"}, "since"),
        ({"since": "-1"}, "since"),
        ({"since": "11", "epoch": "e1"}, "since"),
        ({"since": "11"}, "since"),
        ({"snapshot": "yes please"}, "snapshot"),
        ({"snapshot": "1", "since": "3"}, "snapshot"),
        ({"epoch": "e1"}, "epoch"),
    ],
)
def test_bad_values_name_the_parameter(query: dict[str, str], parameter: str) -> None:
    with pytest.raises(BadParameter) as err:
        parse_stream_request(query, HERE)
    assert err.value.parameter == parameter
