"""Deterministic, DNS-safe names of the operator's children."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from qfleet.fleet import names
from qfleet.isa import TIER_NAMES

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
k8s_names = st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,250}[a-z0-9])?", fullmatch=True)


def test_short_names_read_well() -> None:
    assert (
        names.job_name("arcface-r100", "avx512_vnni", "0123456789") == "arcface-r100-avx512-vnni-0123456789"
    )
    assert names.deployment_name("arcface-r100", "amx_int8") == "arcface-r100-amx-int8"
    assert names.tier_slug("avx_vnni") == "avx-vnni"


@given(model=k8s_names, tier=st.sampled_from(TIER_NAMES))
def test_names_are_dns_labels_of_at_most_63_chars(model: str, tier: str) -> None:
    for name in (
        names.job_name(model, tier, "abcdef0123"),
        names.deployment_name(model, tier),
        names.label_value(model),
    ):
        assert len(name) <= 63
        assert DNS_LABEL.match(name), name


def test_long_names_stay_distinct_and_keep_the_tier_and_key() -> None:
    a = "camera-site-" + "x" * 100 + "-north"
    b = "camera-site-" + "x" * 100 + "-south"
    assert names.deployment_name(a, "avx2") != names.deployment_name(b, "avx2")
    job = names.job_name(a, "avx512_vnni", "0123456789")
    assert job.endswith("-avx512-vnni-0123456789") and len(job) <= 63
    assert names.job_name(a, "avx512_vnni", "0123456789") == job  # deterministic


def test_pipeline_key_is_stable_and_sensitive() -> None:
    inputs = {"source": {"uri": "pvc://m/a", "format": "onnx"}, "image": "t:1"}
    same_other_order = {"image": "t:1", "source": {"format": "onnx", "uri": "pvc://m/a"}}
    assert names.pipeline_key(inputs) == names.pipeline_key(same_other_order)
    assert names.pipeline_key(inputs) != names.pipeline_key({**inputs, "image": "t:2"})
    assert re.fullmatch(r"[0-9a-f]{10}", names.pipeline_key(inputs))


def test_selector_string() -> None:
    assert names.selector_string({"b": "2", "a": "1"}) == "a=1,b=2"
