"""Pod knobs: parsed with the path of every mistake, merged target over defaults, applied to a
pod template without touching what qfleet itself set."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from qfleet.fleet.pods import (
    KNOB_KEYS,
    KnobError,
    PodKnobs,
    apply_pod_knobs,
    default_spread,
    merged,
    parse_names_map,
    parse_pod_knobs,
)

TOLERATION = {"key": "dedicated", "operator": "Equal", "value": "video", "effect": "NoSchedule"}
SPREAD = {"maxSkew": 2, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}
EVERY_KNOB: dict[str, Any] = {
    "tolerations": [TOLERATION, {"operator": "Exists"}],
    "imagePullSecrets": [{"name": "registry"}],
    "priorityClassName": "inference-high",
    "topologySpreadConstraints": [SPREAD],
    "podLabels": {"example.com/team": "vision"},
    "podAnnotations": {"example.com/owner": "cctv team"},
    "serviceAccountName": "faces-reader",
}
SELECTOR = {"qfleet.dev/model": "m", "qfleet.dev/isa": "avx2"}


def template() -> dict[str, Any]:
    """A pod template as qfleet's builders make it (the parts the knobs touch)."""
    return {
        "metadata": {
            "labels": {"qfleet.dev/model": "m", "app.kubernetes.io/name": "qfleet-server"},
            "annotations": {"qfleet.dev/artifact": "pvc://models/x.xml"},
        },
        "spec": {"automountServiceAccountToken": False, "containers": [{"name": "server"}]},
    }


def test_nothing_given_is_nothing_set() -> None:
    assert parse_pod_knobs(None, "spec.targets[0]") == PodKnobs()
    knobs = parse_pod_knobs({"isa": "avx2", "nodeSelector": {"pool": "a"}}, "spec.targets[0]")
    assert knobs == PodKnobs()
    assert knobs.tolerations is None and knobs.topology_spread_constraints is None
    pod = template()
    apply_pod_knobs(pod, knobs, spread_selector=None)
    assert pod == template()


def test_every_knob_is_read() -> None:
    knobs = parse_pod_knobs(EVERY_KNOB, "spec.targets[0]")
    assert knobs.tolerations == (TOLERATION, {"operator": "Exists"})
    assert knobs.image_pull_secrets == ("registry",)
    assert knobs.priority_class_name == "inference-high"
    assert knobs.topology_spread_constraints == (SPREAD,)
    assert knobs.labels == {"example.com/team": "vision"}
    assert knobs.annotations == {"example.com/owner": "cctv team"}
    assert knobs.service_account_name == "faces-reader"
    assert set(KNOB_KEYS) == set(EVERY_KNOB)


def test_empty_names_are_not_given_but_empty_lists_are() -> None:
    knobs = parse_pod_knobs({"priorityClassName": "", "topologySpreadConstraints": []}, "x")
    assert knobs.priority_class_name is None
    assert knobs.topology_spread_constraints == ()


@pytest.mark.parametrize(
    ("knobs", "words"),
    [
        ("tolerations", ["spec.targets[1] must be an object"]),
        ({"tolerations": {"key": "a"}}, ["spec.targets[1].tolerations must be a list"]),
        ({"tolerations": [{"operator": "Maybe"}]}, ["spec.targets[1].tolerations[0].operator", "Exists or Equal"]),
        ({"tolerations": [TOLERATION, {"key": "a", "efect": "NoSchedule"}]},
         ["spec.targets[1].tolerations[1]", "unknown field(s) efect"]),
        ({"tolerations": [{"key": "a", "operator": "Exists", "value": "b"}]}, ["tolerations[0].value", "Exists"]),
        ({"tolerations": [{"value": "b"}]}, ["tolerations[0]", "empty key needs operator Exists"]),
        ({"tolerations": [{"key": "a", "effect": "NoRun"}]}, ["tolerations[0].effect", "NoExecute"]),
        ({"tolerations": [{"key": "a", "effect": "NoSchedule", "tolerationSeconds": 60}]},
         ["tolerations[0].tolerationSeconds needs effect NoExecute"]),
        ({"tolerations": [{"key": "a", "effect": "NoExecute", "tolerationSeconds": "1m"}]},
         ["tolerations[0].tolerationSeconds must be an integer"]),
        ({"tolerations": [{"key": 3}]}, ["tolerations[0].key must be a string"]),
        ({"imagePullSecrets": ["registry"]}, ["imagePullSecrets[0] must be an object"]),
        ({"imagePullSecrets": [{"name": "Registry_1"}]}, ["imagePullSecrets[0].name", "DNS"]),
        ({"imagePullSecrets": [{}]}, ["imagePullSecrets[0].name"]),
        ({"priorityClassName": "High Priority"}, ["spec.targets[1].priorityClassName", "DNS name"]),
        ({"serviceAccountName": 7}, ["spec.targets[1].serviceAccountName"]),
        ({"topologySpreadConstraints": [{**SPREAD, "maxSkew": 0}]}, ["topologySpreadConstraints[0].maxSkew", ">= 1"]),
        ({"topologySpreadConstraints": [{**SPREAD, "topologyKey": ""}]}, ["topologySpreadConstraints[0].topologyKey"]),
        ({"topologySpreadConstraints": [{**SPREAD, "whenUnsatisfiable": "Never"}]},
         ["topologySpreadConstraints[0].whenUnsatisfiable", "DoNotSchedule, ScheduleAnyway"]),
        ({"topologySpreadConstraints": [{**SPREAD, "labelSelector": "app=x"}]},
         ["topologySpreadConstraints[0].labelSelector"]),
        ({"topologySpreadConstraints": [{**SPREAD, "skew": 1}]}, ["topologySpreadConstraints[0]", "unknown field(s) skew"]),
        ({"podLabels": ["team=vision"]}, ["spec.targets[1].podLabels must map names"]),
        ({"podLabels": {"team": "computer vision"}}, ["podLabels.team", "not a valid label value"]),
        ({"podLabels": {"team": 1}}, ["podLabels.team must be a string"]),
        ({"podLabels": {"-team": "a"}}, ["podLabels", "'-team' is not a valid name"]),
        ({"podLabels": {"qfleet.dev/model": "other"}}, ["podLabels.qfleet.dev/model", "operator's own"]),
        ({"podAnnotations": {"qfleet.dev/artifact": "x"}}, ["podAnnotations.qfleet.dev/artifact", "operator's own"]),
        ({"podAnnotations": {"Bad Key": "x"}}, ["podAnnotations", "'Bad Key' is not a valid name"]),
    ],
)  # fmt: skip
def test_mistakes_are_named_with_their_path(knobs: Any, words: list[str]) -> None:
    with pytest.raises(KnobError) as caught:
        parse_pod_knobs(knobs, "spec.targets[1]")
    for word in words:
        assert word in str(caught.value)


def test_annotations_may_hold_any_text() -> None:
    text = "a long note, with spaces & symbols: {json: true}"
    assert parse_names_map({"example.com/note": text}, "x", label_values=False) == {"example.com/note": text}


def test_merged_target_wins_per_field_labels_key_by_key() -> None:
    defaults = parse_pod_knobs(
        {
            "tolerations": [TOLERATION],
            "imagePullSecrets": [{"name": "default-registry"}],
            "priorityClassName": "standard",
            "podLabels": {"team": "platform", "tier": "gold"},
            "podAnnotations": {"a": "1"},
            "serviceAccountName": "qfleet-pods",
        },
        "QFLEET_POD_DEFAULTS",
    )
    target = parse_pod_knobs(
        {"tolerations": [], "priorityClassName": "edge", "podLabels": {"team": "vision"}, "podAnnotations": {"b": "2"}},
        "spec.targets[0]",
    )  # fmt: skip
    both = merged(defaults, target)
    assert both.tolerations == ()  # the target's empty list, given on purpose, wins
    assert both.image_pull_secrets == ("default-registry",)
    assert both.priority_class_name == "edge"
    assert both.service_account_name == "qfleet-pods"
    assert both.labels == {"team": "vision", "tier": "gold"}
    assert both.annotations == {"a": "1", "b": "2"}
    assert both.topology_spread_constraints is None
    assert merged(PodKnobs(), PodKnobs()) == PodKnobs()
    assert merged(defaults, PodKnobs()) == defaults
    assert merged(PodKnobs(), target) == target


def test_apply_sets_every_knob() -> None:
    pod = template()
    apply_pod_knobs(pod, parse_pod_knobs(EVERY_KNOB, "x"), spread_selector=SELECTOR)
    spec = pod["spec"]
    assert spec["tolerations"] == [TOLERATION, {"operator": "Exists"}]
    assert spec["imagePullSecrets"] == [{"name": "registry"}]
    assert spec["priorityClassName"] == "inference-high"
    assert spec["serviceAccountName"] == "faces-reader"
    # A ServiceAccount is for workload identity: still no API token in the pod.
    assert spec["automountServiceAccountToken"] is False
    # The user's constraint names no pods: it counts the tier's replicas.
    assert spec["topologySpreadConstraints"] == [{**SPREAD, "labelSelector": {"matchLabels": SELECTOR}}]
    assert pod["metadata"]["labels"]["example.com/team"] == "vision"
    assert pod["metadata"]["annotations"]["example.com/owner"] == "cctv team"


def test_apply_never_replaces_qfleets_labels_or_annotations() -> None:
    pod = template()
    knobs = PodKnobs(
        labels={"qfleet.dev/model": "other", "app.kubernetes.io/name": "mine", "extra": "yes"},
        annotations={"qfleet.dev/artifact": "pvc://elsewhere"},
    )  # built directly: the parser would refuse the qfleet.dev/ names
    apply_pod_knobs(pod, knobs, spread_selector=None)
    assert pod["metadata"]["labels"] == {**template()["metadata"]["labels"], "extra": "yes"}
    assert pod["metadata"]["annotations"] == template()["metadata"]["annotations"]


def test_serving_replicas_spread_across_hosts_by_default() -> None:
    pod = template()
    apply_pod_knobs(pod, PodKnobs(), spread_selector=SELECTOR)
    assert pod["spec"]["topologySpreadConstraints"] == [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": SELECTOR},
        }
    ]
    assert pod["spec"]["topologySpreadConstraints"] == [default_spread(SELECTOR)]


def test_jobs_get_no_default_spread_and_an_empty_list_turns_it_off() -> None:
    job_pod = template()
    apply_pod_knobs(job_pod, PodKnobs(), spread_selector=None)
    assert "topologySpreadConstraints" not in job_pod["spec"]
    serving = template()
    apply_pod_knobs(serving, PodKnobs(topology_spread_constraints=()), spread_selector=SELECTOR)
    assert "topologySpreadConstraints" not in serving["spec"]


def test_constraints_with_their_own_selector_are_kept_as_given() -> None:
    own = {**SPREAD, "labelSelector": {"matchLabels": {"app": "x"}}}
    keys = {**SPREAD, "matchLabelKeys": ["pod-template-hash"]}
    pod = template()
    apply_pod_knobs(pod, PodKnobs(topology_spread_constraints=(own, keys)), spread_selector=SELECTOR)
    assert pod["spec"]["topologySpreadConstraints"] == [own, keys]


def test_apply_copies_and_leaves_the_knobs_alone() -> None:
    knobs = parse_pod_knobs(EVERY_KNOB, "x")
    before = copy.deepcopy(knobs)
    first, second = template(), template()
    apply_pod_knobs(first, knobs, spread_selector=SELECTOR)
    first["spec"]["tolerations"][0]["value"] = "changed"
    first["spec"]["topologySpreadConstraints"][0]["maxSkew"] = 9
    apply_pod_knobs(second, knobs, spread_selector=SELECTOR)
    assert knobs == before
    assert second["spec"]["tolerations"][0]["value"] == "video"
    assert second["spec"]["topologySpreadConstraints"][0]["maxSkew"] == 2


def test_apply_fills_an_empty_template() -> None:
    pod: dict[str, Any] = {}
    apply_pod_knobs(pod, parse_pod_knobs({"podLabels": {"a": "b"}, "tolerations": [TOLERATION]}, "x"),
                    spread_selector=None)  # fmt: skip
    assert pod == {"metadata": {"labels": {"a": "b"}}, "spec": {"tolerations": [TOLERATION]}}
