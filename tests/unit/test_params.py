"""WebSocket query parameters: live only, snapshot, resume; clear errors otherwise."""

from __future__ import annotations

import pytest

from control_room.ws.params import (
    MAX_INTEGER_DIGITS,
    BadParameter,
    StreamRequest,
    parse_seq,
    parse_stream_request,
)


def test_no_parameters_means_live_only() -> None:
    assert parse_stream_request({}) == StreamRequest()


def test_snapshot_and_resume() -> None:
    assert parse_stream_request({"snapshot": "1"}) == StreamRequest(snapshot=True)
    assert parse_stream_request({"since": "4", "epoch": "e1"}) == StreamRequest(4, "e1")


def test_since_ahead_of_the_stream_is_not_a_parameter_error() -> None:
    # The server may be behind the client (a restored store): the handler resets it.
    assert parse_stream_request({"since": "99", "epoch": "e1"}) == StreamRequest(99, "e1")
    assert parse_stream_request({"since": "99"}) == StreamRequest(99)


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ({"since": "abc"}, "since"),
        ({"since": "-1"}, "since"),
        ({"snapshot": "yes please"}, "snapshot"),
        ({"snapshot": "1", "since": "3"}, "snapshot"),
        ({"epoch": "e1"}, "epoch"),
    ],
)
def test_bad_values_name_the_parameter(query: dict[str, str], parameter: str) -> None:
    with pytest.raises(BadParameter) as err:
        parse_stream_request(query)
    assert err.value.parameter == parameter


@pytest.mark.parametrize("raw", ["１", "+5", "5_0", " 5", "5 ", "-0", "1" * 19, "", "٣"])
def test_integers_are_plain_ascii_digits_only(raw: str) -> None:
    with pytest.raises(BadParameter) as refused:
        parse_seq("since", raw)
    assert refused.value.parameter == "since"
    assert raw not in str(refused.value) or not raw


def test_the_longest_integer_fits_a_bigint() -> None:
    assert parse_seq("since", "9" * MAX_INTEGER_DIGITS) < 2**63
    assert parse_seq("since", "007") == 7
