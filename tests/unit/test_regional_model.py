"""The pure rules of a `regional` keyspace: partitions, homes, and stream names
that `meridian residency check` and the agents parse back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meridian.state.model import regional

partitions = st.from_regex(regional.PARTITION, fullmatch=True)
keyspaces = st.from_regex(r"[a-z][a-z0-9_-]{0,62}", fullmatch=True)
regions = st.from_regex(r"[a-z][a-z0-9-]{0,30}[a-z0-9]", fullmatch=True)


@given(keyspaces, partitions, regions)
def test_every_name_parses_back_to_its_parts(ks: str, part: str, region: str) -> None:
    assert regional.parse(regional.stream(ks, part)) == regional.StreamName(ks, part, None)
    assert regional.parse(regional.mirror(ks, part, region)) == regional.StreamName(
        ks, part, region
    )


@pytest.mark.parametrize(
    "name",
    ["KV_mg_accounts", "MR_carts_us-east", "EVA_eu-west", "KV_mgr_", "KV_mgr_x", "MGRM_x_Pp",
     "MGRM_x_Pp_R", "KV_mgr_ks_Pa.b", "KV_mgr__Pp", ""],
)  # fmt: skip
def test_other_streams_are_not_taken_for_regional_ones(name: str) -> None:
    assert regional.parse(name) is None


def test_a_partition_is_the_first_segment_and_must_fit_a_stream_name() -> None:
    assert regional.partition_of("eu.user-7.profile") == "eu"
    assert regional.partition_of("solo") == "solo"
    assert regional.partition_violations("eu_1-x.k") == []
    (bad,) = regional.partition_violations("a=b.k")
    assert bad.field == "key" and "'a=b'" in bad.rule
    assert regional.partition_violations("p" * 65 + ".k")
    assert regional.partition_violations("x/y", "prefix")[0].field == "prefix"


def test_a_new_partition_is_homed_where_it_is_written_if_allowed() -> None:
    assert regional.home_for_new("us-east", None, None) == "us-east"
    assert regional.home_for_new("us-east", ("us-east", "eu-west"), None) == "us-east"
    assert regional.home_for_new("ap-south", ("eu-west", "us-east"), None) == "eu-west"
    assert regional.home_for_new("ap-south", ("eu-west", "us-east"), "us-east") == "us-east"


def test_mirrors_only_in_allowed_regions_other_than_the_home() -> None:
    everywhere = ("us-east", "eu-west", "ap-south")
    assert regional.mirror_regions("us-east", everywhere, None) == ["eu-west", "ap-south"]
    assert regional.mirror_regions("eu-west", everywhere, ("eu-west",)) == []
    assert regional.mirror_regions("eu-west", everywhere, ("eu-west", "us-east")) == ["us-east"]
