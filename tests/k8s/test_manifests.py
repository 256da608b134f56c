"""The Kubernetes manifests: valid against KubeRay's own CRD schemas (vendored from a pinned release), their
c2f-search commands parse with c2f-search's own parser, their Ray image is inside pyproject.toml's range, and
the settings the issue asks for hold (token auth, no exposed dashboard, teardown and deadlines)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from c2f_search.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "tests" / "data" / "kuberay"
KUBERAY_RELEASE = "v1.7.0"
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load(path: Path):
    return yaml.load(path.read_text(), Loader=Loader)


def _schema(crd: str) -> dict:
    doc = _load(CRDS / crd)
    (v1,) = [v for v in doc["spec"]["versions"] if v["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]


def _strict(schema):
    """The CRD's schema with unknown fields refused, as the API server prunes them: a misspelt key fails here
    instead of being dropped silently by Kubernetes. x-kubernetes-preserve-unknown-fields keeps its freedom."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def rayjob():
    return _load(ROOT / "k8s" / "rayjob.yaml")


@pytest.fixture(scope="module")
def raycluster():
    return _load(ROOT / "k8s" / "raycluster.yaml")


def _validate(manifest: dict, crd: str) -> None:
    jsonschema.validate(manifest, _strict(_schema(crd)), cls=jsonschema.Draft7Validator)


def test_the_crds_are_the_pinned_release_with_its_license():
    for crd, kind in (("ray.io_rayjobs.yaml", "RayJob"), ("ray.io_rayclusters.yaml", "RayCluster")):
        doc = _load(CRDS / crd)
        assert doc["kind"] == "CustomResourceDefinition" and doc["spec"]["names"]["kind"] == kind
    assert "Apache License" in (CRDS / "LICENSE").read_text()
    assert KUBERAY_RELEASE in (CRDS / "README.md").read_text()


def test_rayjob_validates_against_kuberays_schema(rayjob):
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    _validate(rayjob, "ray.io_rayjobs.yaml")


def test_raycluster_validates_against_kuberays_schema(raycluster):
    assert (raycluster["apiVersion"], raycluster["kind"]) == ("ray.io/v1", "RayCluster")
    _validate(raycluster, "ray.io_rayclusters.yaml")


def test_the_schema_check_can_fail(rayjob):
    """A misspelt field, a wrong type and an unknown enum value are each refused."""
    import copy

    for edit in (
        lambda m: m["spec"].update(shutdownAfterJobFinish=True),
        lambda m: m["spec"].update(backoffLimit="two"),
        lambda m: m["spec"]["rayClusterSpec"]["authOptions"].update(mode="password"),
        lambda m: m["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(maxReplica=3),
    ):
        bad = copy.deepcopy(rayjob)
        edit(bad)
        with pytest.raises(jsonschema.ValidationError):
            _validate(bad, "ray.io_rayjobs.yaml")


def _parse(command: str):
    argv = shlex.split(command)
    assert argv[0] == "c2f-search", command
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"c2f-search's parser refuses: {command}")


def test_the_entrypoint_parses_with_c2f_searchs_own_parser(rayjob):
    a = _parse(rayjob["spec"]["entrypoint"])
    assert a.command == "search" and a.address == "auto" and a.resume == "auto"
    assert a.out.startswith("/mnt/c2f/") and a.gpus_per_trial == 1  # results on the shared volume
    with pytest.raises(SystemExit):  # the check can fail: a renamed flag is refused
        build_parser().parse_args([*shlex.split(rayjob["spec"]["entrypoint"])[1:], "--gpus-per-trail", "1"])


def test_every_command_in_the_manifests_and_the_guide_parses():
    """The commands in the manifests' comments and in docs/kubernetes.md: a flag renamed in the CLI fails here."""
    texts = [p.read_text() for p in (ROOT / "k8s").glob("*.yaml")] + [(ROOT / "docs" / "kubernetes.md").read_text()]
    commands = []
    for text in texts:
        text = re.sub(r"\\\n\s*#?\s*", " ", text)  # continued lines
        found = re.finditer(r"c2f-search (search|confirm|pareto|report) [-./][^\n#`|]*", text)
        commands += [m.group(0).strip() for m in found if "..." not in m.group(0)]  # not an elided example
    assert len(commands) >= 6, commands
    for c in commands:
        _parse(c)


def test_the_image_and_ray_version_are_inside_pyprojects_range(rayjob, raycluster):
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (ray_req,) = [r for r in project["dependencies"] if r.startswith("ray")]
    allowed = SpecifierSet(ray_req.split("]", 1)[-1])
    python = SpecifierSet(project["requires-python"])
    for spec in (rayjob["spec"]["rayClusterSpec"], raycluster["spec"]):
        pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
        for pod in pods:
            image = pod["spec"]["containers"][0]["image"]
            m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)(-gpu)?", image)
            assert m, f"{image}: not one of Ray's official images"
            assert Version(m.group(1)) in allowed, f"{image}: Ray {m.group(1)} outside {ray_req}"
            assert Version(m.group(1)) == Version(spec["rayVersion"])
            assert Version(f"{m.group(2)}.{m.group(3)}") in python
    assert Version("2.39.0") not in allowed  # the check can fail


def test_the_cluster_settings_the_issue_asks_for(rayjob, raycluster):
    s = rayjob["spec"]
    assert s["shutdownAfterJobFinishes"] is True
    assert 0 < s["ttlSecondsAfterFinished"] <= 24 * 3600 and s["activeDeadlineSeconds"] >= 3600
    assert s["backoffLimit"] >= 1 and s["submitterConfig"]["backoffLimit"] >= 1
    assert yaml.safe_load(s["runtimeEnvYAML"]) == _load(ROOT / "k8s" / "runtime_env.yaml")
    assert s["rayClusterSpec"] == raycluster["spec"]  # the interactive cluster is the job's
    c = raycluster["spec"]
    assert c["authOptions"]["mode"] == "token"
    head = c["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress")
    assert head["rayStartParams"]["num-cpus"] == "0"  # the head runs no trial
    (gpu,) = c["workerGroupSpecs"]
    assert c["enableInTreeAutoscaling"] and gpu["minReplicas"] == 0 < gpu["maxReplicas"]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    mounts = lambda pod: {m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}  # noqa: E731
    assert "/mnt/c2f" in mounts(head["template"]) and "/mnt/c2f" in mounts(gpu["template"])
    storage = _load(ROOT / "k8s" / "storage.yaml")
    assert storage["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in storage["spec"]["accessModes"]
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in head["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {storage["metadata"]["name"]}
