"""Standard Webhooks signing, pure: the published test vector, keys, headers."""

from __future__ import annotations

import base64
import time

import pytest

from control_room.config import ConfigError, load
from control_room.signing import BadSecret, headers, message_id, secret_key, signature
from tests.notifier.receiver import BadSignature, verify

# The specification's reference test vector (every Standard Webhooks library checks it).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signature_reproduces_the_specification_vector() -> None:
    key = secret_key(VECTOR_SECRET)
    assert signature(key, VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIGNATURE


def test_test_receiver_accepts_the_specification_vector() -> None:
    # The receiver's own check is right too: it accepts the reference signature...
    sent = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TS),
        "webhook-signature": VECTOR_SIGNATURE,
    }
    verify(VECTOR_SECRET, sent, VECTOR_BODY, now=VECTOR_TS)
    # ...and refuses a body changed by one byte.
    with pytest.raises(BadSignature):
        verify(VECTOR_SECRET, sent, VECTOR_BODY.replace(b"4", b"5", 1), now=VECTOR_TS)


def test_whsec_secret_is_the_base64_of_the_key() -> None:
    assert secret_key("whsec_" + base64.b64encode(b"\x00\x01key").decode()) == b"\x00\x01key"


def test_any_other_secret_is_its_utf8_bytes() -> None:
    assert secret_key("plain sécret") == "plain sécret".encode()
    # A string that merely looks like base64 is still used as text without the prefix.
    assert secret_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") == b"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.mark.parametrize("secret", ["whsec_not base64!", "whsec_", "whsec_abc"])
def test_malformed_whsec_secret_is_refused_without_quoting_it(secret: str) -> None:
    with pytest.raises(BadSecret) as caught:
        secret_key(secret)
    rest = secret.removeprefix("whsec_")
    assert not rest or rest not in str(caught.value)


def test_malformed_secret_stops_start_up_with_a_clear_error() -> None:
    env = {
        "LOCAL_TOKEN": "t",
        "JULES_API_KEY": "k",
        "NOTIFY_WEBHOOK": "http://127.0.0.1:9/hook",
        "NOTIFY_WEBHOOK_SECRET": "whsec_%%%hunter2",
    }
    with pytest.raises(ConfigError) as caught:
        load(env, dotenv=None)
    assert caught.value.variable == "NOTIFY_WEBHOOK_SECRET"
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("url", ["ftp://example.com/hook", "example.com/hook", "file:///tmp/x"])
def test_non_http_webhook_url_stops_start_up(url: str) -> None:
    env = {"LOCAL_TOKEN": "t", "JULES_API_KEY": "k", "NOTIFY_WEBHOOK": f"http://ok/1,{url}"}
    with pytest.raises(ConfigError) as caught:
        load(env, dotenv=None)
    assert caught.value.variable == "NOTIFY_WEBHOOK"


def test_several_webhook_urls_are_comma_separated() -> None:
    env = {
        "LOCAL_TOKEN": "t",
        "JULES_API_KEY": "k",
        "NOTIFY_WEBHOOK": " http://a.example/h , https://b.example/h ,",
    }
    assert load(env, dotenv=None).notify_webhooks == ("http://a.example/h", "https://b.example/h")


def test_message_id_is_stable_and_unique_per_delta() -> None:
    assert message_id("e1", 7) == message_id("e1", 7) == "e1-7"
    assert len({message_id("e1", 7), message_id("e1", 8), message_id("e2", 7)}) == 3


def test_headers_are_verified_by_an_independent_receiver() -> None:
    key = secret_key(VECTOR_SECRET)
    now = int(time.time())
    sent = headers("e1-1", now, b'{"seq":1}', key)
    assert sent["Content-Type"] == "application/json"
    assert sent["webhook-id"] == "e1-1"
    assert sent["webhook-timestamp"] == str(now)
    verify(VECTOR_SECRET, {k.lower(): v for k, v in sent.items()}, b'{"seq":1}', now=now)


def test_unsigned_headers_without_a_secret() -> None:
    sent = headers("e1-1", 1, b"{}", None)
    assert "webhook-signature" not in sent
    assert sent["webhook-id"] == "e1-1"
