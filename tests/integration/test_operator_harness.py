"""The test cluster itself: what the emulated API server adds, and how pods become processes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from qfleet.fleet.config import FleetConfig
from qfleet.fleet.manifests import Owner, job_for
from qfleet.fleet.spec import parse_spec
from qfleet.fleet.uris import MOUNT_ROOT
from qfleet.isa import kernel_cap_env
from tests.support.cluster import Cluster, can_emulate, only_paths_rewritten, real_host_flags, running_cluster
from tests.support.operator_fixtures import NAMESPACE, model_body


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path) as cluster:
        await cluster.add_namespace(NAMESPACE)
        yield cluster


async def test_server_side_metadata_and_generation(cluster: Cluster) -> None:
    created = await cluster.apply_model(model_body("m"))
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1
    first = int(meta["resourceVersion"])
    path = cluster.model_path(NAMESPACE, "m")
    status = await cluster.patch(path + "/status", {"status": {"phase": "Pending"}, "spec": {"ignored": 1}})
    assert status["metadata"]["generation"] == 1 and int(status["metadata"]["resourceVersion"]) > first
    assert "ignored" not in status["spec"]  # the status subresource changes the status only
    same = await cluster.patch(path, {"spec": {"demand": {"cameras": 8}}})  # already 8: no new generation
    assert same["metadata"]["generation"] == 1
    changed = await cluster.patch(path, {"spec": {"demand": {"cameras": 9}}})
    assert changed["metadata"]["generation"] == 2


async def test_scale_subresource_maps_to_the_cameras(cluster: Cluster) -> None:
    await cluster.apply_model(model_body("m", cameras=3))
    path = cluster.model_path(NAMESPACE, "m") + "/scale"
    assert (await cluster.request("GET", path))["spec"]["replicas"] == 3
    await cluster.patch(path, {"spec": {"replicas": 12}})
    assert cluster.model(NAMESPACE, "m")["spec"]["demand"]["cameras"] == 12  # type: ignore[index]


def test_pods_run_their_own_command_with_mounts_mapped(tmp_path: Path) -> None:
    cluster = Cluster.__new__(Cluster)  # only the kubelet part, no server needed
    cluster.claims = {"data": tmp_path / "data", "models": tmp_path / "models"}
    spec = parse_spec(model_body("m")["spec"])
    job = job_for(Owner("m", NAMESPACE, "uid"), spec, "avx2", "key", FleetConfig())
    node = {"metadata": {"labels": {"feature.node.kubernetes.io/cpu-cpuid.AVX2": "true"}}}
    pod_dir = tmp_path / "pod"
    argv, env, termination = cluster.pod_process(job["spec"]["template"], pod_dir, node)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert Path(argv[0]).name == "qfleet" and argv[1] == "pipeline" and len(argv) == len(args) + 2
    assert argv[argv.index("--lfw") + 1] == str(tmp_path / "data" / "lfw.bin")
    assert argv[argv.index("--out") + 1].startswith(str(tmp_path / "models" / "qfleet" / "m" / "key"))
    assert argv[argv.index("--termination-log") + 1] == str(termination)
    assert not any(arg.startswith(MOUNT_ROOT) for arg in argv)
    assert env["QFLEET_HOST_ISA"] == "avx2" and env["HOME"] == str(pod_dir / "volumes" / "tmp")
    if can_emulate("avx2"):  # every x86 host with AVX2: the Job runs AVX2 kernels, not the host's
        assert env["ONEDNN_MAX_CPU_ISA"] == kernel_cap_env("avx2")["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    message = f'{{"artifact": "{tmp_path / "models"}/qfleet/m/int8/model.xml"}}'
    assert MOUNT_ROOT + "/models/qfleet/m/int8/model.xml" in cluster.pod_paths_in(
        message, job["spec"]["template"], pod_dir
    )


def test_rewrites_may_move_paths_only() -> None:
    argv, env = ["/venv/bin/qfleet", "pipeline", "--lfw", "/a/lfw.bin", "--threads", "1"], {"HOME": "/tmp/x"}
    moved = (["/venv/bin/qfleet", "pipeline", "--lfw", "/b/lfw.bin", "--threads", "1"], {"HOME": "/tmp/y"})
    assert only_paths_rewritten((argv, env), moved) == moved
    for bad in (
        (argv[:-2], env),  # dropped an argument
        (["/venv/bin/qfleet", "pipeline", "--lfw", "/a/lfw.bin", "--threads", "4"], env),  # not a path
        (["/bin/true", *argv[1:]], env),  # another program
        (argv, {"HOME": "/tmp/x", "EXTRA": "1"}),
    ):
        with pytest.raises(AssertionError):
            only_paths_rewritten((argv, env), bad)


AVX2_HOST = frozenset({"avx2"})
VNNI_HOST = frozenset({"avx2", "avx512f", "avx512_vnni"})
ZEN4_HOST = VNNI_HOST | {"avx512_bf16"}
SAPPHIRE_RAPIDS_HOST = ZEN4_HOST | {"amx_int8", "avx_vnni"}


@pytest.mark.parametrize(
    ("flags", "tiers"),
    [
        (AVX2_HOST, {"avx2"}),
        (VNNI_HOST, {"avx2", "avx512", "avx512_vnni"}),  # no AVX-VNNI flag: that tier is not here
        (ZEN4_HOST, {"avx2", "avx512", "avx512_vnni", "avx512_bf16"}),
        (SAPPHIRE_RAPIDS_HOST, {"avx2", "avx_vnni", "avx512", "avx512_vnni", "avx512_bf16", "amx_int8"}),
        (frozenset({"sse4_2"}), set()),
    ],
)
def test_kernels_are_capped_only_at_tiers_this_host_can_run(flags: frozenset[str], tiers: set[str]) -> None:
    from qfleet.isa import TIER_NAMES

    assert {name for name in TIER_NAMES if can_emulate(name, flags)} == tiers


def test_a_higher_tier_than_the_host_is_not_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real host's flags decide, not a QFLEET_HOST_ISA the test process may carry."""
    monkeypatch.setenv("QFLEET_HOST_ISA", "amx_int8")
    cluster = Cluster.__new__(Cluster)
    cluster.claims = {"data": tmp_path / "data", "models": tmp_path / "models"}
    job = job_for(
        Owner("m", NAMESPACE, "uid"), parse_spec(model_body("m")["spec"]), "avx2", "key", FleetConfig()
    )
    node = {"metadata": {"labels": {"feature.node.kubernetes.io/cpu-cpuid.AMXINT8": "true"}}}
    _, env, _ = cluster.pod_process(job["spec"]["template"], tmp_path / "pod", node)
    assert env["QFLEET_HOST_ISA"] == "amx_int8"
    if "amx_int8" not in real_host_flags():  # not capped: the environment stays the test's own
        assert env.get("ONEDNN_MAX_CPU_ISA") == os.environ.get("ONEDNN_MAX_CPU_ISA")
