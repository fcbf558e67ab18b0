"""The Jules REST API's own shapes, as decoded from the wire.

The API is alpha: every field may be missing or `null` (both read as absent, hence
`X | None = None` throughout, and the accessors below that give the empty value), unknown
fields are ignored and enum values are kept as plain strings, unknown ones included.
"""

from __future__ import annotations

from typing import Final

import msgspec

SESSION_NAME_PREFIX: Final = "sessions/"


class PullRequestOutput(msgspec.Struct, frozen=True, gc=False):
    """`outputs[].pullRequest`."""

    url: str | None = None
    title: str | None = None
    description: str | None = None


class Output(msgspec.Struct, frozen=True, gc=False):
    """One entry of `outputs[]`: a union of which only the pull request matters here."""

    pullRequest: PullRequestOutput | None = None


class GithubRepoContext(msgspec.Struct, frozen=True, gc=False):
    """`sourceContext.githubRepoContext`."""

    startingBranch: str | None = None


class SourceContext(msgspec.Struct, frozen=True, gc=False):
    """`sourceContext`: which repository and branch the session works on."""

    source: str | None = None
    githubRepoContext: GithubRepoContext | None = None


class Session(msgspec.Struct, frozen=True, gc=False):
    """A Jules Session resource. The prompt is not decoded: nothing shown depends on it."""

    name: str | None = None
    id: str | None = None
    title: str | None = None
    sourceContext: SourceContext | None = None
    state: str | None = None
    url: str | None = None
    outputs: tuple[Output | None, ...] | None = None
    createTime: str | None = None
    updateTime: str | None = None
    archived: bool | None = None

    @property
    def session_id(self) -> str:
        """The id, falling back to the last part of `name` (`sessions/{id}`); "" if neither."""
        return self.id or (self.name or "").rpartition("/")[2]

    @property
    def identity_conflict(self) -> bool:
        """True when `id` and `name` are both given and name different sessions."""
        return bool(self.id and self.name and self.name != SESSION_NAME_PREFIX + self.id)


class ListSessionsResponse(msgspec.Struct, frozen=True):
    """One page of `sessions.list`; an empty account may answer `{}`.

    Sessions stay raw JSON here: most are unchanged since the last poll, and recognising
    them by their bytes is several times cheaper than decoding them (see mapping.py).
    """

    sessions: tuple[msgspec.Raw, ...] | None = None
    nextPageToken: str | None = None


RawSession = bytes | msgspec.Raw
"""One Session exactly as the upstream sent it."""

session_decoder: Final = msgspec.json.Decoder(Session)
"""Decodes one Session (a raw one from a listing, or a `GET /sessions/{id}` body)."""


class ErrorBody(msgspec.Struct):
    """The inside of Google's error envelope."""

    code: int | None = None
    message: str | None = None
    status: str | None = None


class ErrorEnvelope(msgspec.Struct):
    """Google's error envelope: `{"error": {...}}`."""

    error: ErrorBody | None = None
