"""Pure: what the broadcast server publishes for, and how load-generator clients subscribe.

Shared by `bench.broadcast_server` (which repositories its deltas belong to) and
`bench.loadgen` (which views its clients ask for), so both sides agree on the names.
"""

from __future__ import annotations

from typing import Final

VIEW_MODES: Final = ("all", "split")


def repository(index: int) -> str:
    """The `index`-th repository the broadcast server publishes for (0: the usual one)."""
    return "acme/widgets" if index == 0 else f"acme/widgets-{index}"


def view_params(mode: str, views: int, index: int) -> list[tuple[str, str]]:
    """The query parameters of the `index`-th client's view, `views` distinct ones in all.

    `all`: view j admits `acme/widgets` and a repository nobody publishes for, so the views
    are distinct (each is prepared on its own) yet every one admits every delta of the
    default broadcast: the worst case, one frame build per view per broadcast for the same
    deliveries. `split`: view j admits repository j alone, so with the broadcast server's
    `--repositories views` each view gets its share of every broadcast. One view of either
    mode is a filtered view all the same, so 1 and 10 views differ only in their number.
    ValueError for an unknown mode or fewer than one view.
    """
    if views < 1:
        raise ValueError(f"views must be at least 1, got {views}")
    j = index % views
    if mode == "all":
        return [("repository", f"{repository(0)},spare/r{j}")]
    if mode == "split":
        return [("repository", repository(j))]
    raise ValueError(f"unknown view mode {mode!r}; expected one of {', '.join(VIEW_MODES)}")
