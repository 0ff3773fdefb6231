"""The chart's Grafana dashboard and Prometheus alerting rules.

Both are off by default. Every PromQL expression in them may only name metrics that qfleet defines
(the operator's and the inference server's ``prometheus_client`` definitions, read from their
source) and only labels those metrics carry. ``promtool`` checks the rendered rules and runs the
unit tests in ``promtool/`` (one file per alert: it fires, and a case where it must not);
``scripts/install-k8s-tools.sh`` installs it from Debian's ``prometheus`` package.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from qfleet.fleet.status import GateRecord, ResultRecord, parse_status
from qfleet.operator.metrics import MODEL_GAUGES, Metrics
from qfleet.serving.metrics import GRPC_SERVER_ERROR_CODES, ServerMetrics
from tests.support.k8s_tools import ALL_FEATURES, CHART, find, render, run_tool, tool, write_values
from tests.support.paths import PACKAGE, REPO

DASHBOARD_PATH = CHART / "files" / "dashboards" / "qfleet.json"
PROMTOOL_TESTS = Path(__file__).parent / "promtool"
METRIC_SOURCES = (PACKAGE / "operator" / "metrics.py", PACKAGE / "serving" / "metrics.py")
ENABLED: dict[str, Any] = {
    "monitoring": {"grafanaDashboard": {"enabled": True}, "prometheusRule": {"enabled": True}}
}
ALERTS = {
    "QfleetCapacityInsufficient",
    "QfleetGateFailed",
    "QfleetRolledBack",
    "QfleetPipelineFailing",
    "QfleetOperatorDown",
    "QfleetNotReconciling",
    "QfleetServerLatencyHigh",
    "QfleetServerErrorsHigh",
}
#: Labels Prometheus adds to every scraped series (ServiceMonitor and PodMonitor targets).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "endpoint", "service"}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
    "offset", "inf", "nan",
}  # fmt: skip


# --- what qfleet exports -------------------------------------------------------------------------


def defined_metrics() -> set[str]:
    """Every series name the qfleet metric definitions expose, from their source."""
    names = {"up"}  # Prometheus' own, per scrape target
    definition = re.compile(r"\b(Counter|Gauge|Histogram)\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\"")
    for path in METRIC_SOURCES:
        for kind, name in definition.findall(path.read_text(encoding="utf-8")):
            if kind == "Counter":
                names.add(f"{name}_total")
            elif kind == "Histogram":
                names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
            else:
                names.add(name)
    # Each model's gauges are rows of one collector, declared in a table (all gauges).
    names.update(name for name, _, _ in MODEL_GAUGES.values())
    return names


def exported_labels() -> dict[str, set[str]]:
    """The labels of each series, from an exposition of both registries with every metric fed."""
    metrics = Metrics()
    status = {
        "conditions": [{"type": "RolledBack", "status": "True", "reason": "CrashLoop"}],
        "demand": {"cameras": 64, "facesPerSecond": 384.0},
        "capacity": {"replicas": 2, "facesPerSecond": 900.0, "shortfallFacesPerSecond": 0.0},
        "variants": [
            {
                "isa": "avx2",
                "state": "Succeeded",
                "replicas": 2,
                "readyReplicas": 1,
                "served": {"precision": "int8", "fpsPerReplica": 450.0},
                "result": {"succeeded": True, "fp32Accuracy": 0.9963, "int8Accuracy": 0.996},
            }
        ],
    }
    metrics.model_status("faces", "arcface", parse_status(status))
    record = ResultRecord("key", "job", True, "t", gate=GateRecord(passed=True, reason="Passed"), seconds=60)
    metrics.new_result("avx2", record)
    metrics.reconciled("ok", 0.01)
    metrics.job_queue(queued=1, running=2)
    server = ServerMetrics(model_name="arcface", model_kind="arcface", model_isa="avx2")
    server.answered("infer", 200)
    server.answered_grpc("ModelInfer", "OK")
    server.inferred(4, 0.02)
    server.batch.observe(4)
    labels: dict[str, set[str]] = {"up": set()}
    for registry in (metrics.registry, server.registry):
        for family in text_string_to_metric_families(generate_latest(registry).decode()):
            for sample in family.samples:
                labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


def test_every_defined_metric_is_exported() -> None:
    """The two views of the metrics agree (the source regex misses no definition and vice versa)."""
    exported = {name for name in exported_labels() if not name.endswith("_created")}
    assert exported == defined_metrics()


# --- PromQL ------------------------------------------------------------------------------------


def _strip(expr: str) -> str:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    return re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression: identifiers that are neither functions nor keywords."""
    found = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", _strip(expr)):
        rest = _strip(expr)[match.end() :].lstrip()
        if rest.startswith("(") or match.group().lower() in PROMQL_WORDS:
            continue
        found.add(match.group())
    return found


def selectors(expr: str) -> Iterator[tuple[str, set[str]]]:
    """(metric, label names its matchers use) for every ``metric{...}`` selector."""
    for match in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", expr):
        yield match.group(1), set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", match.group(2)))


def test_metric_name_parser() -> None:
    expr = (
        'sum by (isa, le) (rate(qfleet_x_bucket{isa=~"$isa", code=~"5.."}[$__rate_interval]))'
        " * on (namespace) group_left (model) qfleet_info > 0.5 and on () count(up) > 0"
    )
    assert metric_names(expr) == {"qfleet_x_bucket", "qfleet_info", "up"}
    assert dict(selectors(expr)) == {"qfleet_x_bucket": {"isa", "code"}}


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD_PATH.read_text(encoding="utf-8"))
    return document


def panels(document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found = []
    for panel in document["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return [panel for panel in found if panel["type"] != "row"]


def dashboard_expressions() -> list[str]:
    document = dashboard()
    exprs = [target["expr"] for panel in panels(document) for target in panel["targets"]]
    for variable in document["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            exprs.append(re.fullmatch(r"label_values\((.*),\s*\w+\)", query).group(1))  # type: ignore[union-attr]
    return exprs


def rule_groups(values: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    (rule,) = find(render({**ENABLED, **(values or {})}), "PrometheusRule")
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def rules(values: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in rule_groups(values) for rule in group["rules"]}


def check_expressions(exprs: list[str], where: str) -> None:
    defined = defined_metrics()
    labels = exported_labels()
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= defined, f"{where}: {sorted(names - defined)} are not qfleet metrics: {expr!r}"
        for metric, used in selectors(expr):
            unknown = used - labels[metric] - TARGET_LABELS
            assert not unknown, f"{where}: {metric} has no label {sorted(unknown)}: {expr!r}"


def test_dashboard_uses_only_qfleet_metrics_and_their_labels() -> None:
    check_expressions(dashboard_expressions(), "dashboard")


def test_rules_use_only_qfleet_metrics_and_their_labels() -> None:
    check_expressions([rule["expr"] for rule in rules().values()], "PrometheusRule")


def test_promtool_inputs_are_qfleet_series() -> None:
    """The unit tests feed the rules series with the names and labels qfleet really exports."""
    labels = exported_labels()
    for path in sorted(PROMTOOL_TESTS.glob("*.yaml")):
        for test in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for series in test["input_series"]:
                (name, used), *_ = selectors(series["series"])
                assert name in labels, f"{path.name}: {name} is not a qfleet metric"
                assert used - TARGET_LABELS <= labels[name], f"{path.name}: {series['series']}"


# --- the dashboard ---------------------------------------------------------------------------------

PANELS = {
    "Demand vs capacity",
    "Capacity shortfall",
    "Replicas desired vs ready",
    "FPS per replica",
    "LFW accuracy",
    "Accuracy drop",
    "Gate outcomes",
    "Pipeline duration",
    "Quantization Jobs",
    "Request latency",
    "Error rate",
}


def test_dashboard_json() -> None:
    document = dashboard()
    assert document["schemaVersion"] >= 39
    assert document["uid"] and document["title"]
    variables = {variable["name"]: variable for variable in document["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "model", "isa"):
        assert variables[name]["type"] == "query" and variables[name]["multi"]
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    found = panels(document)
    assert {panel["title"] for panel in found} >= PANELS
    ids = [panel["id"] for panel in document["panels"]]
    assert len(ids) == len(set(ids))
    for panel in found:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
    by_title = {panel["title"]: panel for panel in found}
    exprs = {title: " ".join(t["expr"] for t in by_title[title]["targets"]) for title in PANELS}
    assert "qfleet_demand_faces_per_second" in exprs["Demand vs capacity"]
    assert "qfleet_capacity_faces_per_second" in exprs["Demand vs capacity"]
    assert "precision" in exprs["FPS per replica"]
    assert "qfleet_ready_replicas" in exprs["Replicas desired vs ready"]
    assert "histogram_quantile(0.95" in exprs["Request latency"]
    assert "histogram_quantile(0.5," in exprs["Request latency"]
    # Model panels follow the variables.
    for title in ("Demand vs capacity", "Replicas desired vs ready", "FPS per replica", "Request latency"):
        assert 'namespace=~"$namespace"' in exprs[title] and 'model=~"$model"' in exprs[title], title


def test_dashboard_panels_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


# --- the chart ---------------------------------------------------------------------------------------


def dashboard_configmaps(objects: list[dict[str, Any]]) -> list[Mapping[str, Any]]:
    return [obj for obj in find(objects, "ConfigMap") if "qfleet.json" in (obj.get("data") or {})]


@pytest.mark.parametrize("values", [{}, ALL_FEATURES], ids=["defaults", "all-features"])
def test_off_by_default(values: dict[str, Any]) -> None:
    objects = render(values)
    assert not dashboard_configmaps(objects)
    assert not find(objects, "PrometheusRule")


def test_dashboard_configmap() -> None:
    (configmap,) = dashboard_configmaps(render(ENABLED))
    assert configmap["metadata"]["namespace"] == "qfleet-system"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["qfleet.json"]) == dashboard()

    settings = {
        "enabled": True,
        "sidecarLabel": "grafana.example.com/dashboard",
        "sidecarLabelValue": "qfleet",
        "namespace": "monitoring",
        "labels": {"team": "vision"},
        "annotations": {"grafana_folder": "Video"},
    }
    (configmap,) = dashboard_configmaps(render({"monitoring": {"grafanaDashboard": settings}}))
    metadata = configmap["metadata"]
    assert metadata["namespace"] == "monitoring"
    assert metadata["labels"]["grafana.example.com/dashboard"] == "qfleet"
    assert metadata["labels"]["team"] == "vision"
    assert "grafana_dashboard" not in metadata["labels"]
    assert metadata["annotations"] == {"grafana_folder": "Video"}


def test_prometheus_rule() -> None:
    (rule,) = find(render(ENABLED), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "qfleet-system"
    found = rules()
    assert set(found) == ALERTS
    for name, alert in found.items():
        assert re.fullmatch(r"[0-9]+[smh]", alert["for"]), name
        assert alert["labels"]["severity"] in {"warning", "critical"}, name
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], name
    for name in ("QfleetCapacityInsufficient", "QfleetGateFailed", "QfleetRolledBack"):
        assert "$labels.namespace" in found[name]["annotations"]["summary"], name
        assert "$labels.model" in found[name]["annotations"]["summary"], name
    assert 'up{job="qfleet-metrics"}' in found["QfleetOperatorDown"]["expr"]


def test_the_alert_and_the_dashboard_count_the_same_grpc_codes_as_server_errors() -> None:
    codes = re.compile(r'qfleet_server_grpc_requests_total\{method="ModelInfer", code=~"([^"]+)"\}')
    alert = rules()["QfleetServerErrorsHigh"]["expr"]
    panels = [target["expr"] for panel in dashboard()["panels"] for target in panel.get("targets", [])]
    found = [*codes.findall(alert), *(match for expr in panels for match in codes.findall(expr))]
    assert len(found) == 2  # the alert's and the error panel's
    assert set(found) == {"|".join(GRPC_SERVER_ERROR_CODES)}


def test_prometheus_rule_settings() -> None:
    settings = {
        "enabled": True,
        "labels": {"release": "prometheus"},
        "alertLabels": {"team": "vision"},
        "operatorJob": "qfleet-operator",
        "thresholds": {
            "capacityInsufficientFor": "20m",
            "pipelineFailures": 5,
            "pipelineFailureWindow": "6h",
            "notReconcilingFor": "30m",
            "serverLatencyP95Seconds": 0.25,
            "serverErrorRatio": 0.01,
        },
    }
    values = {"monitoring": {"prometheusRule": settings}}
    (rule,) = find(render(values), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    found = rules(values)
    assert all(alert["labels"]["team"] == "vision" for alert in found.values())
    assert 'up{job="qfleet-operator"}' in found["QfleetOperatorDown"]["expr"]
    assert found["QfleetCapacityInsufficient"]["for"] == "20m"
    assert "[6h])) >= 5" in found["QfleetPipelineFailing"]["expr"]
    assert "qfleet_reconciles_total[30m]" in found["QfleetNotReconciling"]["expr"]
    assert found["QfleetServerLatencyHigh"]["expr"].endswith("> 0.25")
    assert found["QfleetServerErrorsHigh"]["expr"].endswith("> 0.01")


@pytest.mark.parametrize(
    ("override", "complaint"),
    [
        ({"grafanaDashboard": {"enabled": "yes"}}, "enabled"),
        ({"grafanaDashboard": {"namespace": "Not_A_Namespace"}}, "namespace"),
        ({"prometheusRule": {"thresholds": {"capacityInsufficientFor": "ten minutes"}}}, "capacityInsuff"),
        ({"prometheusRule": {"thresholds": {"serverErrorRatio": 2}}}, "serverErrorRatio"),
        ({"prometheusRule": {"thresholds": {"pipelineFailures": 0}}}, "pipelineFailures"),
        ({"prometheusRule": {"alertLabels": {"severity": "page"}}}, "severity"),
        ({"prometheusRule": {"treshold": {}}}, "treshold"),
    ],
)
def test_helm_enforces_the_monitoring_schema(
    override: dict[str, Any], complaint: str, tmp_path: Path
) -> None:
    values = write_values({"monitoring": override}, tmp_path)
    result = run_tool("helm", "template", "x", str(CHART), "--values", str(values), check=False)
    assert result.returncode != 0
    assert complaint in result.stderr


def test_helm_lint_strict_with_monitoring(tmp_path: Path) -> None:
    values = write_values({**ALL_FEATURES, **ENABLED}, tmp_path)
    result = run_tool("helm", "lint", "--strict", str(CHART), "--values", str(values))
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("kubernetes", ["1.29", "1.33"])
def test_rendered_objects_match_the_kubernetes_api_schemas(kubernetes: str) -> None:
    utils = pytest.importorskip("kubernetes_validate.utils", reason="pip install kubernetes-validate")
    objects = render({**ALL_FEATURES, **ENABLED})
    (configmap,) = dashboard_configmaps(objects)
    utils.validate(configmap, kubernetes, strict=True)
    # A PrometheusRule is a custom resource without a built-in schema: its structure, then.
    (rule,) = find(objects, "PrometheusRule")
    with pytest.raises(utils.SchemaNotFoundError):
        utils.validate(rule, kubernetes, strict=True)
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert set(group) == {"name", "rules"}
        for alert in group["rules"]:
            assert set(alert) == {"alert", "expr", "for", "labels", "annotations"}
            assert all(isinstance(value, str) for value in alert["labels"].values())
            assert all(isinstance(value, str) for value in alert["annotations"].values())


# --- promtool ------------------------------------------------------------------------------------


def promtool() -> str:
    """promtool beside helm (installed with it when apt is available), or on PATH; skips without."""
    beside_helm = Path(tool("helm")).parent / "promtool"
    found = str(beside_helm) if beside_helm.exists() else shutil.which("promtool")
    if not found:
        pytest.skip(
            "promtool unavailable: scripts/install-k8s-tools.sh installs it from Debian's prometheus "
            "package (needs apt-get), or put Prometheus' promtool on PATH"
        )
    return found


def write_rules(directory: Path) -> Path:
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
    return path


def run_promtool(*args: str, cwd: Path) -> str:
    import subprocess

    result = subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout


def test_promtool_check_rules(tmp_path: Path) -> None:
    rules_path = write_rules(tmp_path)
    output = run_promtool("check", "rules", str(rules_path), cwd=tmp_path)
    assert f"{len(ALERTS)} rules found" in output


def test_every_alert_has_a_promtool_test_that_fires_and_one_that_does_not() -> None:
    covered = set()
    for path in sorted(PROMTOOL_TESTS.glob("*.yaml")):
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert document["rule_files"] == ["rules.yaml"], path.name
        checks = [check for test in document["tests"] for check in test["alert_rule_test"]]
        names = {check["alertname"] for check in checks}
        assert len(names) == 1, f"{path.name}: one alert per file"
        assert any(check["exp_alerts"] for check in checks), f"{path.name}: never expects it to fire"
        assert any(not check["exp_alerts"] for check in checks), f"{path.name}: no case where it must not"
        covered |= names
    assert covered == ALERTS


@pytest.mark.parametrize("name", sorted(path.name for path in PROMTOOL_TESTS.glob("*.yaml")))
def test_promtool_unit_tests(name: str, tmp_path: Path) -> None:
    write_rules(tmp_path)
    shutil.copy(PROMTOOL_TESTS / name, tmp_path / name)
    assert "SUCCESS" in run_promtool("test", "rules", name, cwd=tmp_path)


def test_docs_explain_every_alert() -> None:
    text = (REPO / "docs" / "OBSERVABILITY.md").read_text(encoding="utf-8")
    for alert in ALERTS:
        assert f"### {alert}" in text, alert
