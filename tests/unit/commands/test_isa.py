"""`qfleet isa`: the pure parts on fake /proc/cpuinfo texts, and the command on this host.

Nothing here asserts this host's tier or speed: the subprocess tests check the result's keys
and that its parts agree with each other, on AVX2-only, AVX-512 VNNI and bf16/AMX hosts alike.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from qfleet import isa
from qfleet.commands.isa import cpu_model, describe_host, kernel_cap, nfd_labels, render

P = isa.NFD_PREFIX


def cpuinfo(model: str, flags: str) -> str:
    """Two processors, as /proc/cpuinfo lists them (only the first one's flags count)."""
    block = f"processor\t: {{n}}\nvendor_id\t: x\nmodel name\t: {model}\nflags\t\t: {flags}\n"
    return block.format(n=0) + "\n" + block.format(n=1) + "\n"


COMMON = "fpu vme de pse tsc msr sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma bmi1 bmi2 avx2 sha_ni"
AVX512 = "avx512f avx512dq avx512cd avx512bw avx512vl avx512_vbmi2 avx512_bitalg avx512_vpopcntdq"
HOSTS: dict[str, tuple[str, str]] = {
    "zen3": ("AMD EPYC 7B13 64-Core Processor", COMMON + " vaes vpclmulqdq"),
    "icelake": ("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", f"{COMMON} {AVX512} avx512_vnni avx512ifma"),
    "zen4": ("AMD EPYC 9B14 96-Core Processor", f"{COMMON} {AVX512} avx512_vnni avx512_bf16 avx512ifma"),
    "sapphire_rapids": (
        "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
        f"{COMMON} avx_vnni {AVX512} avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8",
    ),
}
EXPECTED: dict[str, tuple[str, list[str], set[str]]] = {
    # host: (tier, deciding flags, NFD labels)
    "zen3": ("avx2", ["avx2"], {P + "AVX2"}),
    "icelake": (
        "avx512_vnni",
        ["avx512_vnni", "avx512f", "avx2"],
        {P + "AVX512VNNI", P + "AVX512F", P + "AVX2"},
    ),
    "zen4": (
        "avx512_bf16",
        ["avx512_bf16", "avx512_vnni", "avx512f", "avx2"],
        {P + "AVX512BF16", P + "AVX512VNNI", P + "AVX512F", P + "AVX2"},
    ),
    "sapphire_rapids": (
        "amx_int8",
        ["amx_int8", "avx512_bf16", "avx512_vnni", "avx512f", "avx_vnni", "avx2"],
        {P + "AMXINT8", P + "AVX512BF16", P + "AVX512VNNI", P + "AVX512F", P + "AVXVNNI", P + "AVX2"},
    ),
}
#: What OpenVINO's CPU plugin reports (RUNTIME_REQUIREMENTS isa=) on each host, uncapped.
RUNTIME_ISA = {
    "zen3": "Intel AVX2",
    "icelake": "Intel AVX-512 with Intel DL Boost",
    "zen4": "Intel AVX-512 with Intel DL Boost and bfloat16 support",
    "sapphire_rapids": "Intel AVX-512 with float16, Intel DL Boost and bfloat16 support and "
    "Intel AMX with bfloat16 and 8-bit integer support",
}


def describe(host: str, **overrides: Any) -> dict[str, Any]:
    text = cpuinfo(*HOSTS[host])
    tier = isa.tier_from_flags(isa.cpuinfo_flags(text))
    bf16 = isa.has_native_bf16(tier)
    arguments: dict[str, Any] = {
        "host_tier": tier,
        "override": None,
        "plugin_bf16": bf16,
        "default_precision": "bf16" if bf16 else "f32",
        "runtime_isa": RUNTIME_ISA[host],
        "cap": None,
    }
    return describe_host(text, **(arguments | overrides))


@pytest.mark.parametrize("host", HOSTS)
def test_each_cpu_kind_gets_its_tier_flags_and_labels(host: str) -> None:
    tier, flags, labels = EXPECTED[host]
    result = describe(host)
    assert result["tier"] == result["cpuinfo_tier"] == result["kernel_tier"] == tier
    assert result["source"] == "cpuinfo" and result["override"] is None
    assert result["cpu"] == HOSTS[host][0]
    assert result["flags"] == flags
    assert result["nfd_labels"] == dict.fromkeys(labels, "true")
    assert isa.tier_from_labels(result["nfd_labels"]) == tier
    assert result["native_bf16"] is (host in ("zen4", "sapphire_rapids"))
    assert result["kernel_cap"] == {"variable": None, "value": None, "capped": False}
    assert tier in render(result) and HOSTS[host][0] in render(result)


@pytest.mark.parametrize("host", HOSTS)
def test_a_node_like_this_is_admitted_by_its_own_tier_only(host: str) -> None:
    """The labels `qfleet isa` prints are what the same-ISA node affinity matches."""
    labels = describe(host)["nfd_labels"]
    admitted = [name for name in isa.TIER_NAMES if admits(isa.node_affinity(name), labels)]
    assert admitted == [EXPECTED[host][0]]


def admits(affinity: dict[str, Any], labels: dict[str, str]) -> bool:
    terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    for expression in terms[0]["matchExpressions"]:
        key, operator = expression["key"], expression["operator"]
        if operator == "In" and labels.get(key) not in expression["values"]:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def test_bf16_is_native_only_when_cpu_and_openvino_both_say_so() -> None:
    # Zen 4's flags, but an OpenVINO capped (or too old) to compute bf16: not native.
    capped = describe(
        "zen4",
        plugin_bf16=False,
        default_precision="f32",
        runtime_isa="Intel AVX-512 with Intel DL Boost",
        cap=("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI"),
    )
    assert capped["bf16"] == {"cpu": True, "openvino": False} and capped["native_bf16"] is False
    assert capped["kernel_cap"] == {
        "variable": "ONEDNN_MAX_CPU_ISA",
        "value": "AVX512_CORE_VNNI",
        "capped": True,
    }
    assert capped["kernel_tier"] == "avx512_vnni" and capped["tier"] == "avx512_bf16"
    assert "capped below the CPU" in render(capped)
    # A cap at or above the CPU's best caps nothing.
    uncapped = describe("icelake", cap=("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX"))
    assert uncapped["kernel_cap"]["capped"] is False
    # The plugin's default precision is reported as it is (bf16 on bf16 hosts).
    assert describe("sapphire_rapids")["default_inference_precision"] == "bf16"
    assert "FP32 is computed in f32" in render(describe("sapphire_rapids"))


def test_override_is_reported_and_labels_follow_the_tier() -> None:
    result = describe("sapphire_rapids", host_tier="avx512_vnni", override="avx512_vnni")
    assert result["source"] == "override" and result["cpuinfo_tier"] == "amx_int8"
    # A node of the overridden tier: no higher tier's label, lower ones as the flags imply.
    assert set(result["nfd_labels"]) == {P + "AVX512VNNI", P + "AVX512F", P + "AVXVNNI", P + "AVX2"}
    assert isa.tier_from_labels(result["nfd_labels"]) == "avx512_vnni"
    assert "QFLEET_HOST_ISA=avx512_vnni overrides /proc/cpuinfo's amx_int8" in render(result)


def test_unreadable_or_pre_avx2_cpuinfo() -> None:
    result = describe_host(
        None,
        host_tier=None,
        override=None,
        plugin_bf16=False,
        default_precision="f32",
        runtime_isa=None,
        cap=None,
    )
    assert result["source"] == "unknown" and result["flags"] == [] and result["nfd_labels"] == {}
    assert "unreadable" in render(result)
    old = describe_host(
        cpuinfo("Old CPU", "fpu sse sse2 sse4_2 avx"),
        host_tier=None,
        override=None,
        plugin_bf16=False,
        default_precision="f32",
        runtime_isa="Intel AVX",
        cap=None,
    )
    assert old["tier"] is None and old["nfd_labels"] == {} and old["kernel_tier"] is None
    assert "needs AVX2" in render(old)


def test_small_helpers() -> None:
    assert cpu_model(cpuinfo(*HOSTS["zen3"])) == HOSTS["zen3"][0]
    assert cpu_model("flags : avx2\n") is None
    assert nfd_labels(None, {"avx2"}) == {}
    assert kernel_cap({}) is None
    assert kernel_cap({"DNNL_MAX_CPU_ISA": "AVX2"}) == ("DNNL_MAX_CPU_ISA", "AVX2")
    assert kernel_cap({"ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "SSE41"}) == (
        "ONEDNN_MAX_CPU_ISA",
        "AVX2",
    )


def qfleet_isa_json(env: dict[str, str]) -> dict[str, Any]:
    environ = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")}
    environ.pop(isa.OVERRIDE_ENV, None)
    done = subprocess.run(
        [sys.executable, "-m", "qfleet.cli", "isa", "--json"],
        env=environ | env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert {
        "tier",
        "source",
        "override",
        "cpuinfo_tier",
        "cpu",
        "flags",
        "native_bf16",
        "bf16",
        "default_inference_precision",
        "runtime_isa",
        "kernel_tier",
        "kernel_cap",
        "nfd_labels",
    } <= set(result)
    # Consistency, whatever this host is.
    assert result["tier"] in (*isa.TIER_NAMES, None)
    assert result["default_inference_precision"] in ("f32", "bf16")
    if result["default_inference_precision"] == "bf16":
        assert result["bf16"]["openvino"] is True
    assert result["native_bf16"] is (result["bf16"]["cpu"] and result["bf16"]["openvino"])
    assert result["bf16"]["cpu"] is isa.has_native_bf16(result["cpuinfo_tier"])
    assert isa.tier_from_labels(result["nfd_labels"]) == result["tier"]
    assert set(result["nfd_labels"].values()) <= {"true"}
    assert result["kernel_tier"] == isa.tier_of_runtime_isa(result["runtime_isa"])
    if result["source"] == "cpuinfo":
        assert result["tier"] == result["cpuinfo_tier"] == isa.tier_from_flags(result["flags"])
    return result


def test_qfleet_isa_json_is_consistent_on_this_host() -> None:
    result = qfleet_isa_json({})
    assert result["override"] is None and result["kernel_cap"]["variable"] is None
    assert result["kernel_cap"]["capped"] is False


def test_qfleet_isa_json_under_an_avx2_cap_and_an_override() -> None:
    """Capped at AVX2 (any x86 host qfleet runs on has it): no bf16, AVX2 kernels; the override
    decides the tier and its labels."""
    result = qfleet_isa_json(isa.kernel_cap_env("avx2") | {isa.OVERRIDE_ENV: "avx2"})
    assert result["kernel_cap"]["variable"] == "ONEDNN_MAX_CPU_ISA"
    assert result["kernel_tier"] == "avx2"
    assert result["kernel_cap"]["capped"] is (result["cpuinfo_tier"] not in (None, "avx2"))
    assert result["bf16"]["openvino"] is False and result["native_bf16"] is False
    assert result["default_inference_precision"] == "f32"
    assert result["source"] == "override" and result["tier"] == "avx2"
    assert result["nfd_labels"] == {isa.tier("avx2").nfd_label: "true"}
