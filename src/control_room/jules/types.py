"""The Jules REST API's own shapes, as decoded from the wire (unknown fields ignored)."""

from __future__ import annotations

from typing import Final

import msgspec


class PullRequestOutput(msgspec.Struct, frozen=True, gc=False):
    """`outputs[].pullRequest`."""

    url: str = ""
    title: str = ""
    description: str = ""


class Output(msgspec.Struct, frozen=True, gc=False):
    """One entry of `outputs[]`: a union of which only the pull request matters here."""

    pullRequest: PullRequestOutput | None = None


class GithubRepoContext(msgspec.Struct, frozen=True, gc=False):
    """`sourceContext.githubRepoContext`."""

    startingBranch: str = ""


class SourceContext(msgspec.Struct, frozen=True, gc=False):
    """`sourceContext`: which repository and branch the session works on."""

    source: str = ""
    githubRepoContext: GithubRepoContext | None = None


class Session(msgspec.Struct, frozen=True, gc=False):
    """A Jules Session resource. The prompt is not decoded: nothing shown depends on it."""

    name: str = ""
    id: str = ""
    title: str = ""
    sourceContext: SourceContext | None = None
    state: str = "STATE_UNSPECIFIED"
    url: str = ""
    outputs: tuple[Output, ...] = ()
    createTime: str = ""
    updateTime: str = ""
    archived: bool = False

    @property
    def session_id(self) -> str:
        """The id, falling back to the last part of `name` (`sessions/{id}`)."""
        return self.id or self.name.rpartition("/")[2]


class ListSessionsResponse(msgspec.Struct, frozen=True):
    """One page of `sessions.list`; an empty account may answer `{}`.

    Sessions stay raw JSON here: most are unchanged since the last poll, and recognising
    them by their bytes is several times cheaper than decoding them (see mapping.py).
    """

    sessions: tuple[msgspec.Raw, ...] = ()
    nextPageToken: str = ""


RawSession = bytes | msgspec.Raw
"""One Session exactly as the upstream sent it."""

session_decoder: Final = msgspec.json.Decoder(Session)
"""Decodes one Session (a raw one from a listing, or a `GET /sessions/{id}` body)."""


class ErrorBody(msgspec.Struct):
    """The inside of Google's error envelope."""

    code: int = 0
    message: str = ""
    status: str = ""


class ErrorEnvelope(msgspec.Struct):
    """Google's error envelope: `{"error": {...}}`."""

    error: ErrorBody | None = None
