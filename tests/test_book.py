"""The validator's book rules, one window at a time."""

import pytest

from gauntlet.config import ValidatorConfig
from gauntlet.rating import PeerRecord, WindowOutcome, update_book
from gauntlet.rating.book import fresh
from gauntlet.scoring import LossTest
from gauntlet.uniqueness import CopyFinding

CFG = ValidatorConfig()


def good(own=0.10, rand=0.05):
    return LossTest(own_before=4.0, own_after=4.0 * (1 - own), random_before=4.0, random_after=4.0 * (1 - rand))


def test_tested_peers_gain_rating_and_moving_average_while_failed_ones_rank_last_with_a_penalty():
    outcome = WindowOutcome(0, present={"a", "b"}, failed={"c": "missing", "d": "invalid: bad"},
                            tests={"a": good(0.10, 0.05), "b": good(0.01, 0.02)})
    book, why = update_book({}, outcome, CFG)
    assert book["a"].ma == pytest.approx(0.05) and book["b"].ma == pytest.approx(-0.05)
    assert why["a"]["indicator"] == 1 and why["b"]["indicator"] == -1
    assert book["a"].mu > book["b"].mu > book["c"].mu
    assert book["c"].penalty == 0.75 and book["d"].penalty == 0.75 and why["d"]["status"] == "invalid: bad"
    assert book["a"].final == pytest.approx(book["a"].ordinal * 0.05) and book["b"].final == 0.0
    assert book["c"].final == 0.0 and why["c"]["final"] == 0.0  # MA 0: a window score of zero


def test_sync_score_and_the_out_of_sync_penalty():
    outcome = WindowOutcome(1, present={"a", "b"}, steps_behind={"a": 1.0, "b": 4.0})
    book, _ = update_book({"a": fresh(CFG), "b": fresh(CFG)}, outcome, CFG)
    assert book["a"].sync == pytest.approx(0.8**2.5) and book["a"].penalty == 1.0
    assert book["b"].sync == pytest.approx(0.2**2.5) and book["b"].penalty == 0.75


def test_a_present_peer_in_sync_recovers_one_penalty_step():
    rec = PeerRecord(25.0, 8.0, penalty=0.75 * 0.75)
    book, _ = update_book({"a": rec}, WindowOutcome(5, present={"a"}), CFG)
    assert book["a"].penalty == pytest.approx(0.75)


@pytest.mark.parametrize("overlap, action", [(0.45, "penalty"), (0.55, "reset"), (0.65, "reset+ban")])
def test_copy_findings_penalise_reset_or_ban_the_later_uploader(overlap, action):
    rec = PeerRecord(30.0, 2.0, ma=0.5, first_seen=0, last_seen=9)
    finding = CopyFinding(offender="b", original="a", overlap=overlap, cosine=0.99)
    book, why = update_book({"a": rec, "b": rec}, WindowOutcome(10, present={"a", "b"}, copies=[finding]), CFG)
    assert why["b"]["copy"]["action"] == action and "copy" not in why["a"]
    if action == "penalty":
        assert book["b"].penalty == pytest.approx(0.5) and book["b"].mu == 30.0
    else:
        assert (book["b"].mu, book["b"].ma) == (CFG.rating_mu, 0.0) and book["b"].final == 0.0
    assert (book["b"].banned_until == 210) == (action == "reset+ban")


def test_inactive_peers_are_reset_after_three_windows():
    rec = PeerRecord(35.0, 2.0, ma=0.4, first_seen=0, last_seen=6)
    book, _ = update_book({"a": rec}, WindowOutcome(8, failed={"a": "missing"}), CFG)
    assert book["a"].mu == 35.0  # windows 7 and 8 missed: not yet
    book, why = update_book({"a": rec}, WindowOutcome(9, failed={"a": "missing"}), CFG)
    assert why["a"]["reset"] == "inactive" and book["a"].ma == 0.0 and book["a"].first_seen == 9


def test_banned_peers_score_zero_and_sit_out_the_rating_match():
    rec = PeerRecord(40.0, 1.0, ma=0.9, banned_until=20, first_seen=0, last_seen=9)
    book, why = update_book({"a": rec}, WindowOutcome(10, present={"a"}), CFG)
    assert book["a"].final == 0.0 and why["a"]["banned"] is True
