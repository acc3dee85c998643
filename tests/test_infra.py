"""Cluster manifests (infra/): render with parameters, parse every file, check what KubeRay / Ray need."""
from __future__ import annotations

import os
import re
import shlex
import subprocess

import pytest
import yaml

from pipeline import cli
from pipeline.submit.render import read_params, render_all, render_text, templates
from pipeline.stage import STAGES
from schemas.base import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INFRA = os.path.join(REPO, "infra")
PARAMS = read_params(os.path.join(INFRA, "params.example.env"))
CRON = re.compile(r"^(\S+\s+){4}\S+$")


@pytest.fixture(scope="module")
def docs() -> dict[str, list[dict]]:
    return {r.path: r.documents() for r in render_all(INFRA, PARAMS)}


def _kind(docs, kind: str, api: str | None = None) -> list[dict]:
    found = [d for ds in docs.values() for d in ds if d.get("kind") == kind]
    if api:
        assert all(d["apiVersion"] == api for d in found), kind
    return found


def _entry_module_exists(entrypoint: str) -> tuple[str, list[str]]:
    argv = shlex.split(entrypoint)
    assert argv[:2] == ["python", "-m"] and argv[2].startswith("jobs.") and argv[3] == "--config", entrypoint
    stage = argv[2].split(".", 1)[1]
    assert os.path.exists(os.path.join(REPO, "jobs", f"{stage}.py")), entrypoint
    assert stage in STAGES
    return stage, argv


def test_every_template_renders_and_parses(docs):
    assert set(docs) == set(templates(INFRA)) and len(docs) >= 8
    assert all(docs.values())


def test_images_buckets_and_credentials_are_parameters():
    for rel in templates(INFRA):
        text = open(os.path.join(INFRA, rel)).read()
        for line in text.splitlines():
            if re.match(r"\s*(-\s*)?image:", line):
                assert "${" in line, f"{rel}: hard-coded image: {line.strip()}"
            if "s3://" in line:
                assert "s3://${S3_BUCKET}" in line, f"{rel}: hard-coded bucket: {line.strip()}"
        assert not re.search(r"AKIA[0-9A-Z]{12,}|aws_secret_access_key\s*[:=]", text, re.I), rel


def test_rendering_is_strict():
    with pytest.raises(ConfigError, match="no value for IMAGE"):
        render_all(INFRA, {k: v for k, v in PARAMS.items() if k != "IMAGE"})
    with pytest.raises(ConfigError, match="not used by any template.*IMAGEE"):
        render_all(INFRA, {**PARAMS, "IMAGEE": "x"})
    assert render_text("a ${X:-1} ${Y} $Z ${lower}", {"Y": "2"}) == "a 1 2 $Z ${lower}"


def test_raycluster_cpu_head_and_autoscaling_gpu_workers(docs):
    (rc,) = _kind(docs, "RayCluster", "ray.io/v1")
    spec = rc["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no work on the head
    assert head["template"]["spec"]["containers"][0]["image"] == PARAMS["IMAGE"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu = [g for g in groups.values()
           if int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1]
    assert gpu, "no GPU worker group"
    for g in gpu:
        assert 0 <= g["minReplicas"] < g["maxReplicas"] and g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    mounts = head["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "vbpe-configs", "mountPath": "/etc/vbpe", "readOnly": True} in mounts


def test_one_rayjob_per_stage_on_the_cluster_with_a_real_entrypoint(docs):
    (rc,) = _kind(docs, "RayCluster")
    jobs = {}
    for rel, ds in docs.items():
        for d in ds:
            if d.get("kind") == "RayJob":
                assert d["apiVersion"] == "ray.io/v1"
                assert d["spec"]["clusterSelector"] == {"ray.io/cluster": rc["metadata"]["name"]}
                assert d["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["image"] == PARAMS["IMAGE"]
                stage, argv = _entry_module_exists(d["spec"]["entrypoint"])
                assert argv[4] == f"/etc/vbpe/{stage}.yaml"
                jobs[stage] = d
    assert set(jobs) == set(STAGES)


def test_configs_in_the_configmap_validate(docs):
    (cm,) = [d for d in _kind(docs, "ConfigMap", "v1") if d["metadata"]["name"] == "vbpe-configs"]
    assert "tokenize.yaml" in cm["data"], "the scheduled re-tokenization needs its config"
    checked = 0
    for key, text in cm["data"].items():
        stage = STAGES[key.removesuffix(".yaml")]
        try:
            cls = stage.config_class()
        except ConfigError:
            continue  # that stage's schema is not part of this build
        cfg = cls.from_dict(yaml.safe_load(text), source=key)
        checked += 1
        if key == "tokenize.yaml":
            assert cfg.out == f"s3://{PARAMS['S3_BUCKET']}/vbpe/tokens" and cfg.local_relative_paths() == []
    assert checked >= 1


def test_raycronjob_schedules_tokenize(docs):
    (cron,) = _kind(docs, "RayCronJob", "ray.io/v1")
    assert CRON.match(cron["spec"]["schedule"])
    tmpl = cron["spec"]["jobTemplate"]
    assert _entry_module_exists(tmpl["entrypoint"])[0] == "tokenize"
    assert "ray.io/cluster" in tmpl["clusterSelector"]


def _cronjob(docs, name: str) -> dict:
    (cj,) = [c for c in _kind(docs, "CronJob", "batch/v1") if c["metadata"]["name"] == name]
    return cj


def _role_of(docs, pod: dict) -> dict:
    sa = pod["serviceAccountName"]
    (binding,) = [b for b in _kind(docs, "RoleBinding") if any(s["name"] == sa for s in b["subjects"])]
    (role,) = [r for r in _kind(docs, "Role") if r["metadata"]["name"] == binding["roleRef"]["name"]]
    return role


def test_plain_cronjob_creates_a_rayjob_with_rbac(docs):
    cj = _cronjob(docs, "vbpe-tokenize")
    assert CRON.match(cj["spec"]["schedule"]) and cj["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    role = _role_of(docs, pod)
    assert any("ray.io" in r["apiGroups"] and "rayjobs" in r["resources"] and {"create", "delete"} <= set(r["verbs"])
               for r in role["rules"])
    script = pod["containers"][0]["args"][0]
    assert "kubectl create -f -" in script
    subprocess.run(["sh", "-n", "-c", script], check=True)  # the script at least parses
    template_cm = pod["volumes"][0]["configMap"]["name"]
    (cm,) = [d for d in _kind(docs, "ConfigMap") if d["metadata"]["name"] == template_cm]
    rayjob = yaml.safe_load(cm["data"]["rayjob.yaml"].replace("__RAYJOB_NAME__", "vbpe-tokenize-29000000"))
    assert rayjob["kind"] == "RayJob" and rayjob["apiVersion"] == "ray.io/v1"
    assert _entry_module_exists(rayjob["spec"]["entrypoint"])[0] == "tokenize"


def test_aws_cluster_launcher_with_spot_gpu_workers(docs):
    (launcher,) = docs[os.path.join("aws", "cluster.yaml")]
    assert launcher["provider"]["type"] == "aws" and launcher["provider"]["region"]
    assert launcher["docker"]["image"] == PARAMS["IMAGE"]
    types = launcher["available_node_types"]
    head = types[launcher["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    spot_gpu = [t for t in types.values()
                if t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
                and re.match(r"(g|p)\d", t["node_config"]["InstanceType"])]
    assert spot_gpu and all(t["min_workers"] == 0 < t["max_workers"] for t in spot_gpu)
    assert any("--num-cpus=0" in c for c in launcher["head_start_ray_commands"])


def test_render_cli_writes_files(tmp_path, capsys):
    params = tmp_path / "p.env"
    params.write_text(open(os.path.join(INFRA, "params.example.env")).read())
    assert cli.main(["infra", "render", "--infra", INFRA, "--params", str(params), "--set", "NAMESPACE=team-a",
                     "--out", str(tmp_path / "out")]) == 0
    written = capsys.readouterr().out.split()
    assert len(written) == len(templates(INFRA))
    rc = yaml.safe_load_all(open(tmp_path / "out" / "k8s" / "raycluster.yaml"))
    assert {d["metadata"]["namespace"] for d in rc} == {"team-a"}


def test_kubernetes_manifests_render_without_aws_parameters(tmp_path, capsys):
    k8s_only = {k: v for k, v in PARAMS.items() if not k.startswith("AWS_")}
    with pytest.raises(ConfigError, match="no value for AWS_"):
        render_all(INFRA, k8s_only)
    rendered = render_all(INFRA, k8s_only, only=["k8s"])
    assert rendered and all(r.path.startswith("k8s" + os.sep) for r in rendered)
    render_all(INFRA, PARAMS, only=["k8s"])  # AWS values present but unused this time: not a typo
    with pytest.raises(ConfigError, match="no such template directory"):
        render_all(INFRA, PARAMS, only=["kube"])
    params = tmp_path / "p.env"
    params.write_text("IMAGE=registry.example.com/vbpe:1\nS3_BUCKET=b\n")
    assert cli.main(["infra", "render", "--params", str(params), "--only", "k8s", "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "k8s" / "raycluster.yaml").exists() and not (tmp_path / "o" / "aws").exists()


def _uses_token(container: dict, pod: dict) -> bool:
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    if env.get("RAY_AUTH_MODE") != "token" or not env.get("RAY_AUTH_TOKEN_PATH"):
        return False
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    mounted = [name for name in mounts if name in secrets and env["RAY_AUTH_TOKEN_PATH"].startswith(mounts[name])]
    return bool(mounted) and all(secrets[n] == "vbpe-ray-auth" for n in mounted)


def test_every_ray_process_and_submitter_uses_token_auth(docs):
    (rc,) = _kind(docs, "RayCluster")
    pods = [rc["spec"]["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in rc["spec"]["workerGroupSpecs"]]
    for pod in pods:
        assert all(_uses_token(c, pod) for c in pod["containers"])
    specs = [d["spec"] for d in _kind(docs, "RayJob")] + [c["spec"]["jobTemplate"] for c in _kind(docs, "RayCronJob")]
    cm = next(d for d in _kind(docs, "ConfigMap") if d["metadata"]["name"] == "vbpe-scheduled-rayjob")
    specs.append(yaml.safe_load(cm["data"]["rayjob.yaml"].replace("__RAYJOB_NAME__", "x"))["spec"])
    assert len(specs) >= 6
    for spec in specs:
        pod = spec["submitterPodTemplate"]["spec"]
        assert all(_uses_token(c, pod) for c in pod["containers"])
    assert not any("RAY_AUTH_MODE" in r.text and "disabled" in r.text for r in render_all(INFRA, PARAMS))


FAKE_KUBECTL = """#!/bin/sh
# get rayjob NAME -> missing; get rayjobs ... -> the listing; delete rayjob NAME -> recorded
case "$1 $2" in
  "get rayjob") exit 1 ;;
  "get rayjobs") cat "$LISTING" ;;
  "create -f") cat > /dev/null ;;
  "delete rayjob") echo "$3" >> "$DELETED" ;;
esac
"""


def _run_with_fake_kubectl(tmp_path, script: str, listing: str, env: dict | None = None) -> list[str]:
    import datetime as dt

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "kubectl").write_text(FAKE_KUBECTL)
    (bin_dir / "kubectl").chmod(0o755)
    (tmp_path / "listing").write_text(listing)
    deleted = tmp_path / "deleted"
    deleted.write_text("")
    full = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LISTING": str(tmp_path / "listing"),
            "DELETED": str(deleted), **(env or {})}
    subprocess.run(["sh", "-c", script], check=True, env=full, cwd=tmp_path)
    assert dt
    return deleted.read_text().split()


def _listing() -> str:
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc)
    old = (now - dt.timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    recent = (now - dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (f"old-ok SUCCEEDED {old}\nold-failed FAILED {old}\nrecent-ok SUCCEEDED {recent}\n"
            f"running RUNNING\nold-pending PENDING {old}\n")


def test_finished_rayjobs_are_deleted_after_their_ttl(docs, tmp_path):
    cleanup = _cronjob(docs, "vbpe-rayjob-cleanup")
    pod = cleanup["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert any({"list", "delete"} <= set(r["verbs"]) for r in _role_of(docs, pod)["rules"])
    script = pod["containers"][0]["args"][0]
    assert sorted(_run_with_fake_kubectl(tmp_path, script, _listing())) == ["old-failed", "old-ok"]
    scheduled = _cronjob(docs, "vbpe-tokenize")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    templates_dir = tmp_path / "templates"
    templates_dir.mkdir()
    (templates_dir / "rayjob.yaml").write_text("kind: RayJob\nmetadata: {name: __RAYJOB_NAME__}\n")
    script = scheduled["containers"][0]["args"][0].replace("/templates/", f"{templates_dir}/")
    deleted = _run_with_fake_kubectl(tmp_path, script, _listing(), {"JOB_NAME": "vbpe-tokenize-29000000"})
    assert sorted(deleted) == ["old-failed", "old-ok"]


def test_cluster_doc_says_what_is_exposed():
    text = open(os.path.join(REPO, "docs", "cluster.md")).read()
    for needle in ("RAY_AUTH_MODE=token", "vbpe-ray-auth", "8265", "6379", "ClusterIP", "--only k8s", "RAYJOB_TTL_SECONDS"):
        assert needle in text, needle
