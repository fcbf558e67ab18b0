"""Which vanished sessions are checked, and what the checks decide (pure, no I/O)."""

from __future__ import annotations

from control_room.deletions import CHECK_SAMPLE, GONE, SEAM_SAMPLE, Check, Outcome, judge, sample
from control_room.jules.types import Session

ORDER = [str(i) for i in range(100)]
PRESENT = Check(Outcome.PRESENT, session=Session(id="x"))
UNKNOWN = Check(Outcome.UNKNOWN, why="timed out")


def test_a_few_vanished_sessions_are_all_checked_in_listing_order() -> None:
    assert sample({"7", "3", "new"}, ORDER) == ["3", "7", "new"]


def test_many_are_sampled_evenly_including_both_ends_of_every_run() -> None:
    # Issue 9.1: 25 real deletions at the top, 25 skipped by a torn page further down.
    vanished = {str(i) for i in (*range(25), *range(100, 125))}
    picked = sample(vanished, [str(i) for i in range(150)])
    assert len(picked) == CHECK_SAMPLE == len(set(picked))
    assert picked[0] == "0" and picked[-1] == "124"
    assert {p for p in picked if int(p) >= 100}  # the tear is checked, whatever the count


def test_the_run_after_each_page_boundary_is_sampled_too() -> None:
    # 450 real deletions on both sides of 5 skipped right after the page that ended at
    # "199": an even sample misses them, the boundary's first and last do not.
    order = [str(i) for i in range(1000)]
    skipped = [str(i) for i in range(200, 205)]
    vanished = {str(i) for i in (*range(10, 60), *range(400, 800))} | set(skipped)
    assert not set(sample(vanished, order)) & set(skipped)
    picked = sample(vanished, order, seams=["99", "199", "299"])
    assert len(picked) == CHECK_SAMPLE + 2 == len(set(picked))
    assert picked[-2:] == ["200", "204"]


def test_boundary_samples_are_capped() -> None:
    order = [str(i) for i in range(1000)]
    vanished = {o for i, o in enumerate(order) if i % 10 == 0}  # one after every seam
    seams = [str(i - 1) for i in range(10, 1000, 10)]
    assert len(sample(vanished, order, seams=seams)) == CHECK_SAMPLE + SEAM_SAMPLE


def test_a_sample_that_is_all_gone_vouches_for_the_rest() -> None:
    verdict = judge({"1", "2", "3"}, {"1": GONE, "2": GONE})
    assert verdict.deleted == {"1", "2", "3"} and not verdict.torn


def test_one_session_still_there_makes_the_listing_torn_and_nothing_unchecked_is_deleted() -> None:
    verdict = judge({"1", "2", "3"}, {"1": GONE, "2": PRESENT})
    assert verdict.torn
    assert (verdict.deleted, set(verdict.present), verdict.unconfirmed) == ({"1"}, {"2"}, {"3"})


def test_an_unanswered_check_keeps_its_session_and_the_unchecked_ones() -> None:
    verdict = judge({"1", "2", "3"}, {"1": GONE, "2": UNKNOWN})
    assert not verdict.torn
    assert (verdict.deleted, verdict.unconfirmed) == ({"1"}, {"2", "3"})


def test_no_answer_at_all_deletes_nothing() -> None:
    assert judge({"1"}, {}).unconfirmed == {"1"}
