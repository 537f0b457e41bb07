"""The demo's rollout check (demo.rollout.check): it passes a clean run and
fails each way the rollouts can go wrong."""

from __future__ import annotations

from typing import Any

import pytest

from meridian.demo import rollout


def clean() -> dict[str, Any]:
    return {
        "canary": "ap-south",
        "interval_s": 4.0,
        "bad_phase": "RolledBack",
        "bad_message": "analysis failed in ap-south: error rate 31.00% > 5.00%",
        "bad_regions": {"ap-south": "rolled-back", "us-east": "pending", "eu-west": "pending"},
        "first_bad_answer_s": 40.0,
        "rolled_back_s": 45.2,
        "rollback_after_s": 5.2,
        "v2_answers_during_faulty_rollout": {"ap-south": 31},
        "v2_answers_in_canary_after_rollback": 0,
        "consistency": "passed",
        "consistency_detail": "31 calls had reached 2.0.0 in ap-south; all were answered",
        "probes": 400,
        "good_phase": "Healthy",
        "good_took_s": 21.0,
        "v2_answers_during_good_rollout": {"ap-south": 80, "us-east": 60, "eu-west": 40},
    }


def test_a_clean_run_passes() -> None:
    c = rollout.check(clean())
    assert c.ok, c.detail
    assert "5.2 s after its first bad answer" in c.detail


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"bad_phase": "Paused"}, "ended Paused"),
        ({"bad_regions": {"ap-south": "rolled-back", "us-east": "progressing"}}, "regions after"),
        ({"v2_answers_during_faulty_rollout": {"ap-south": 3, "us-east": 1}}, "outside ap-south"),
        ({"v2_answers_in_canary_after_rollback": 2}, "after the rollback"),
        ({"rollback_after_s": 9.6}, "goal ≤ 9.5 s"),
        ({"rollback_after_s": None}, "rolled back None s"),
        ({"consistency": "failed"}, "consistency check failed"),
        ({"good_phase": "Paused"}, "good rollout ended Paused"),
    ],
)
def test_each_failure_fails_the_check(change: dict[str, Any], why: str) -> None:
    c = rollout.check({**clean(), **change})
    assert not c.ok
    assert why in c.detail, c.detail
