"""The chart, the CRD, its samples and the GitOps example against an API server: real ``kubectl``
and ``helm`` dry runs, answered by the KMock emulator (``tests/support/k8s_tools.py``).

The static checks of the same files are ``tests/unit/deploy/test_chart_render.py`` and
``tests/unit/deploy/test_examples.py``; these need the tools of ``scripts/install-k8s-tools.sh``
and skip without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.support.k8s_tools import (
    ALL_FEATURES,
    CHART,
    CRDS,
    discovery_server,
    find,
    load_yaml_documents,
    render,
    render_text,
    write_values,
)
from tests.support.paths import REPO

GITOPS = REPO / "examples" / "gitops" / "surveillance"


def test_kubectl_accepts_the_rendered_chart_in_a_client_side_dry_run(tmp_path: Path) -> None:
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(render_text(ALL_FEATURES, include_crds=True))
    objects = render(ALL_FEATURES, include_crds=True)
    crds = [*find(objects, "CustomResourceDefinition"), *prometheus_operator_crds()]
    with discovery_server(tmp_path, crds) as server:
        result = server.kubectl("apply", "--dry-run=client", "--validate=false", "-f", str(manifest))
    created = [line for line in result.stdout.splitlines() if line.endswith("(dry run)")]
    assert len(created) == len(objects), result.stdout


def test_helm_install_server_dry_run_against_an_api_server(tmp_path: Path) -> None:
    """helm's install path with a cluster: version constraint, kind mapping, existing objects, hooks."""
    values = write_values(ALL_FEATURES, tmp_path)
    objects = render(ALL_FEATURES, include_crds=True)
    crds = [*find(objects, "CustomResourceDefinition"), *prometheus_operator_crds()]
    install = ["install", "qfleet", str(CHART), "--namespace", "qfleet-system", "--values", str(values)]
    # The emulator serves no OpenAPI documents; the schemas are checked by kubernetes-validate above.
    install += ["--dry-run=server", "--disable-openapi-validation"]
    with discovery_server(tmp_path, crds) as server:
        result = server.helm(*install)
        assert "STATUS: pending-install" in result.stdout
        assert "kind: ClusterKopfPeering" in result.stdout.split("HOOKS:")[1]
    # Chart.yaml's kubeVersion keeps the chart off clusters older than it supports.
    with discovery_server(tmp_path, crds, minor=26) as old:
        refused = old.helm(*install, check=False)
    assert refused.returncode != 0 and "kubeVersion" in refused.stderr


def prometheus_operator_crds() -> list[dict[str, Any]]:
    """Just enough of the Prometheus Operator's CRDs for kubectl to know the kinds."""
    return [
        {
            "spec": {
                "group": "monitoring.coreos.com",
                "scope": "Namespaced",
                "names": {"kind": kind, "plural": kind.lower() + "s", "singular": kind.lower()},
                "versions": [{"name": "v1", "served": True, "storage": True}],
            }
        }
        for kind in ("ServiceMonitor", "PodMonitor")
    ]


# --- Security: every pod is locked down ------------------------------------------------------------


def test_kubectl_dry_run_of_the_crd_its_samples_and_the_gitops_folder(tmp_path: Path) -> None:
    samples = sorted((CRDS / "samples").glob("*.yaml"))
    assert samples
    with discovery_server(tmp_path) as server:
        applied = server.kubectl("apply", "--dry-run=client", "--validate=false", "-f", str(CRDS)).stdout
        assert (
            "customresourcedefinition.apiextensions.k8s.io/quantizedmodels.qfleet.dev created (dry run)"
            in applied
        )
        applied = server.kubectl(
            "apply", "--dry-run=client", "--validate=false", "-f", str(CRDS / "samples")
        ).stdout
        assert applied.count("quantizedmodel.qfleet.dev/") == sum(
            len(load_yaml_documents(p)) for p in samples
        )
        applied = server.kubectl("apply", "--dry-run=client", "--validate=false", "-k", str(GITOPS)).stdout
        assert "quantizedmodel.qfleet.dev/arcface-r100 created (dry run)" in applied
        assert "namespace/surveillance created (dry run)" in applied
        # The short name and the scale subresource are what `kubectl scale qm/...` relies on.
        created = server.kubectl(
            "create",
            "--dry-run=client",
            "--validate=false",
            "-o",
            "yaml",
            "-f",
            str(CRDS / "qfleet.dev_quantizedmodels.yaml"),
        ).stdout
    rendered = yaml.safe_load(created)
    assert rendered["spec"]["names"]["shortNames"] == ["qm"]
