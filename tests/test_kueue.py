"""Queued admission with Kueue: the RayJob of the -kueue overlays and the queue in k8s/admin/kueue/, checked
against Kueue's own CRDs (vendored in tests/schemas/kueue/) and against what Kueue's RayJob integration
needs to admit the job at all. The rest (KubeRay CRDs, Kubernetes schemas, security, checkov) covers
these overlays in tests/test_k8s.py, which lists every overlay."""

from __future__ import annotations

import copy
from collections import Counter

import jsonschema
import pytest

from test_k8s import (K8S, REPO, autoscaled, cluster_specs, of_kind, only, quantity, render, render_folder,
                      strict_crd_validator)

KUEUE_SCHEMAS = REPO / "tests" / "schemas" / "kueue"  # vendored, see its README.md
KUEUE_VERSION = "v1beta2"  # the storage version of Kueue v0.19
QUEUED = ["dev-kueue", "prod-kueue"]
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
MAX_POD_SETS = 18  # a Kueue Workload's limit: head + worker groups + the submitter


def admin() -> tuple[dict, ...]:
    return render_folder(K8S / "admin" / "kueue")


def queued_job(overlay: str) -> dict:
    return only(render(overlay), "RayJob", "detector-paper")


def validate_kueue(doc: dict) -> None:
    assert doc["apiVersion"] == f"kueue.x-k8s.io/{KUEUE_VERSION}", doc["apiVersion"]
    plural = doc["kind"].lower() + ("es" if doc["kind"].endswith("s") else "s")
    crd = KUEUE_SCHEMAS / f"kueue.x-k8s.io_{plural}.yaml"
    error = jsonschema.exceptions.best_match(strict_crd_validator(crd, KUEUE_VERSION).iter_errors(doc))
    if error is not None:
        raise error


def pod_requests(pod: dict) -> Counter:
    """What Kueue counts for one pod: its containers' requests (limits where a request is missing), or
    the largest init container's where that is more."""
    def of(container: dict) -> Counter:
        resources = container.get("resources", {})
        return Counter({k: quantity(v) for k, v in {**resources.get("limits", {}),
                                                    **resources.get("requests", {})}.items()})

    total = sum((of(c) for c in pod["containers"]), Counter())
    for init in pod.get("initContainers", []):
        total = total | of(init)  # the larger of each resource
    return total


def job_requests(job: dict) -> Counter:
    """The whole RayJob as Kueue admits it: the head, every worker of every group, and the submitter pod
    (K8sJobMode), each pod set as many times as it has pods."""
    spec = job["spec"]["rayClusterSpec"]
    pod_sets = [(1, spec["headGroupSpec"]["template"]["spec"])]
    pod_sets += [(g["replicas"], g["template"]["spec"]) for g in spec["workerGroupSpecs"]]
    assert job["spec"]["submissionMode"] == "K8sJobMode"
    pod_sets.append((1, job["spec"]["submitterPodTemplate"]["spec"]))
    total = Counter()
    for count, pod in pod_sets:
        for resource, amount in pod_requests(pod).items():
            total[resource] += count * amount
    return total


def shortfall(queue: dict, needed: Counter) -> dict[str, str]:
    """What a ClusterQueue lacks to ever admit a job needing `needed`: per resource, 'not covered' or the
    quota beside the need. Empty when the job fits an empty queue."""
    quota: Counter = Counter()
    covered: set[str] = set()
    for group in queue["spec"]["resourceGroups"]:
        covered |= set(group["coveredResources"])
        for flavor in group["flavors"]:
            for resource in flavor["resources"]:
                # A pod set takes one flavor per group: the largest flavor bounds what it can get.
                quota[resource["name"]] = max(quota[resource["name"]], quantity(resource["nominalQuota"]))
    missing = {}
    for resource, amount in needed.items():
        if resource not in covered:
            missing[resource] = "not covered by the ClusterQueue (Kueue then never admits the job)"
        elif quota[resource] < amount:
            missing[resource] = f"quota {quota[resource]:g} < {amount:g} requested"
    return missing


# --- the objects, against Kueue's CRDs -----------------------------------------------------------------


def test_admin_overlay_holds_the_queue_and_every_object_matches_kueues_crds():
    docs = admin()
    assert sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs) == [
        "ClusterQueue/detector", "LocalQueue/detector", "ResourceFlavor/detector-default",
        "WorkloadPriorityClass/detector-batch", "WorkloadPriorityClass/detector-urgent"]
    for d in docs:
        validate_kueue(d)
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "detector"
        assert "namespace" not in d["metadata"], "the LocalQueue's namespace is chosen at apply time (-n)"


@pytest.mark.parametrize(
    "kind, mutate, message",
    [
        ("ClusterQueue", lambda d: d["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0].update(
            nominalQuote="84"), "nominalQuote"),
        ("ClusterQueue", lambda d: d["spec"]["preemption"].update(withinClusterQueue="Lower"), "Lower"),
        ("LocalQueue", lambda d: d["spec"].update(clusterQueue=7), "7"),
        ("WorkloadPriorityClass", lambda d: d.update(value="high"), "high"),
        ("ResourceFlavor", lambda d: d.update(spec={"nodeLabel": {"a": "b"}}), "nodeLabel"),
    ],
)
def test_kueue_validation_catches_a_typo_a_bad_enum_and_a_wrong_type(kind, mutate, message):
    doc = copy.deepcopy(of_kind(admin(), kind)[0])
    validate_kueue(doc)
    mutate(doc)
    with pytest.raises(jsonschema.ValidationError, match=message):
        validate_kueue(doc)


# --- the job goes to that queue, suspended, and can be admitted whole -----------------------------------


@pytest.mark.parametrize("overlay", QUEUED)
def test_the_job_names_the_local_queue_and_a_priority_class_of_the_admin_overlay(overlay):
    job = queued_job(overlay)
    local = only(admin(), "LocalQueue", job["metadata"]["labels"][QUEUE_LABEL])
    only(admin(), "ClusterQueue", local["spec"]["clusterQueue"])
    only(admin(), "WorkloadPriorityClass", job["metadata"]["labels"][PRIORITY_LABEL])
    # Kueue looks the queue up in the job's own namespace: neither names one, both take `-n` at apply time,
    # and the ClusterQueue takes LocalQueues from any namespace.
    assert "namespace" not in job["metadata"] and "namespace" not in local["metadata"]
    assert only(admin(), "ClusterQueue", local["spec"]["clusterQueue"])["spec"]["namespaceSelector"] == {}


@pytest.mark.parametrize("overlay", QUEUED)
def test_the_job_is_created_suspended_with_its_whole_cluster_and_as_kueue_requires(overlay):
    spec = queued_job(overlay)["spec"]
    assert spec["suspend"] is True  # Kueue unsuspends it on admission, and suspends it again to preempt it
    # Kueue's RayJob webhook: a cluster of its own, deleted at the end, not autoscaled, groups not "head".
    assert "clusterSelector" not in spec and spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert not autoscaled(cluster) and "autoscalerOptions" not in cluster
    groups = cluster["workerGroupSpecs"]
    assert all(g["groupName"] != "head" for g in groups) and 1 + len(groups) + 1 <= MAX_POD_SETS
    for g in groups:  # all workers from the start, so the quota Kueue reserves is what the job runs on
        assert 0 < g["minReplicas"] == g["replicas"] == g["maxReplicas"]


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_the_queued_job_is_the_one_shot_job_of_its_environment_with_only_kueues_changes(env):
    expected = copy.deepcopy(queued_job(f"{env}-rayjob"))
    expected["metadata"]["labels"].update({QUEUE_LABEL: "detector", PRIORITY_LABEL: "detector-batch"})
    expected["spec"]["suspend"] = True
    cluster = expected["spec"]["rayClusterSpec"]
    cluster["enableInTreeAutoscaling"] = False
    del cluster["autoscalerOptions"]
    cluster["headGroupSpec"]["template"]["spec"]["automountServiceAccountToken"] = False
    for group in cluster["workerGroupSpecs"]:
        group["replicas"] = group["minReplicas"] = group["maxReplicas"]
    assert queued_job(f"{env}-kueue") == expected
    # Beside it, the same volume, TensorBoard and policies, less the head's way to the API server.
    others = {(d["kind"], d["metadata"]["name"]) for d in render(f"{env}-rayjob") if d["kind"] != "RayJob"}
    queued = {(d["kind"], d["metadata"]["name"]) for d in render(f"{env}-kueue") if d["kind"] != "RayJob"}
    assert others - queued == {("NetworkPolicy", "detector-ray-head-egress-api")} and queued <= others


@pytest.mark.parametrize("overlay", QUEUED)
def test_the_cluster_queue_can_admit_the_whole_job(overlay):
    job = queued_job(overlay)
    needed = job_requests(job)
    assert needed["nvidia.com/gpu"] >= 1 and needed["cpu"] > 0
    (queue,) = of_kind(admin(), "ClusterQueue")
    assert shortfall(queue, needed) == {}


def test_the_quota_is_sized_to_one_prod_job():
    (queue,) = of_kind(admin(), "ClusterQueue")
    prod = job_requests(queued_job("prod-kueue"))
    assert shortfall(queue, prod) == {}
    # One more worker, or two such jobs, and the queue holds the second back.
    twice = Counter({k: 2 * v for k, v in prod.items()})
    assert set(shortfall(queue, twice)) == set(prod)
    bigger = copy.deepcopy(queued_job("prod-kueue"))
    bigger["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] += 1
    assert shortfall(queue, job_requests(bigger))["nvidia.com/gpu"] == "quota 8 < 9 requested"
    queue = copy.deepcopy(queue)
    queue["spec"]["resourceGroups"][0]["coveredResources"].remove("ephemeral-storage")
    assert "not covered" in shortfall(queue, prod)["ephemeral-storage"]


def test_what_the_queue_admits_fits_the_namespaces_resource_quota():
    """Kueue admits by its own quota; the namespace's ResourceQuota (k8s/admin) then admits the pods. A
    job the first admits and the second refuses would hold the queue's quota with pods that never start."""
    hard = only(render_folder(K8S / "admin"), "ResourceQuota", "detector")["spec"]["hard"]
    (queue,) = of_kind(admin(), "ClusterQueue")
    quota = {r["name"]: quantity(r["nominalQuota"])
             for g in queue["spec"]["resourceGroups"] for f in g["flavors"] for r in f["resources"]}
    # TensorBoard runs beside the job in the namespace, outside the queue.
    beside = sum((pod_requests(d["spec"]["template"]["spec"]) for d in of_kind(render("prod-kueue"), "Deployment")),
                 Counter())
    for resource, amount in quota.items():
        assert amount + beside[resource] <= quantity(hard[f"requests.{resource}"]), resource


def test_preemption_goes_by_the_workload_priority_classes():
    (queue,) = of_kind(admin(), "ClusterQueue")
    assert queue["spec"]["preemption"]["withinClusterQueue"] == "LowerPriority"
    values = {d["metadata"]["name"]: d["value"] for d in of_kind(admin(), "WorkloadPriorityClass")}
    # The overlays' jobs take the lowest class: only a run marked urgent preempts them.
    assert {queued_job(o)["metadata"]["labels"][PRIORITY_LABEL] for o in QUEUED} == {min(values, key=values.get)}
    assert values["detector-urgent"] > values["detector-batch"]
