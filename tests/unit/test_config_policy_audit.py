"""The [policy] and [audit] tables: defaults, and each bad value refused
naming the field and the rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from meridian.core.errors import ConfigError
from meridian.policy.store import initial_policies
from tests.unit.config_harness import NO_LINKS, assert_violation, config_error, load_text


def test_defaults_resolve_by_whether_a_sandbox_runs(tmp_path: Path) -> None:
    sandbox = load_text(tmp_path, NO_LINKS)
    assert sandbox.initial_policy == "sandbox"
    assert sandbox.audit.checkpoint_interval_s == 5.0
    assert sandbox.audit_keys_dir == sandbox.ca_path / "audit"
    real = load_text(
        tmp_path,
        NO_LINKS
        + "".join(
            f'[[region]]\nname = "{r}"\nnats_urls = ["nats://10.0.0.{i}:4222"]\n'
            for i, r in enumerate(("us-east", "eu-west", "ap-south"))
        ),
    )
    assert real.initial_policy == "locked"
    assert initial_policies(real).count == 2


@pytest.mark.parametrize(
    ("table", "field", "hint"),
    [
        ('[policy]\ninitial = "open"\n', "policy.initial", "must be sandbox or locked"),
        ('[policy]\ninitial = "x.txt"\n', "policy.initial", "a path to a .cedar file"),
        ('[policy]\ninitial = "missing.cedar"\n', "policy.initial", "no such file"),
        ("[policy]\ndecision_log_sample = 1.5\n", "policy.decision_log_sample", "1"),
        ("[policy]\nsample = 1\n", "policy.sample", "unknown setting"),
        ("[audit]\ncheckpoint_interval_s = 0\n", "audit.checkpoint_interval_s", "0.1"),
        ('[audit]\nkeys_dir = ""\n', "audit.keys_dir", "non-empty path"),
        ("[audit]\ninterval = 1\n", "audit.interval", "unknown setting"),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, table: str, field: str, hint: str) -> None:
    assert_violation(config_error(tmp_path, NO_LINKS + table), field, hint)


def test_an_initial_set_that_does_not_validate_stops_the_agent(tmp_path: Path) -> None:
    (tmp_path / "bad.cedar").write_text('permit (principal, action == Action::"nope", resource);')
    config = load_text(tmp_path, NO_LINKS + '[policy]\ninitial = "bad.cedar"\n')
    with pytest.raises(ConfigError) as err:
        initial_policies(config)
    assert_violation(err.value, "policy.initial", 'unrecognized action `Action::"nope"`')
