"""Deployment artefacts, checked without network or container engine: Dockerfile,
.dockerignore, docker-compose.yml, Kubernetes manifests, Prometheus rules and the Grafana
dashboard. Linters and validators run when installed (the test extra brings hadolint and
check-jsonschema; kubectl, kubernetes-validate and promtool are optional) and are skipped,
saying why, when they are not."""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge import config
from bridge.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yaml"
DASHBOARD = DEPLOY / "grafana" / "oscc-bridge.json"


def tool(name: str, env_var: str | None = None) -> str:
    """Path of an external tool, or skip the test naming how to get it."""
    found = os.environ.get(env_var or "") or shutil.which(name)
    if not found:
        venv_bin = Path(sys.executable).parent / name
        found = str(venv_bin) if venv_bin.exists() else None
    if not found:
        pytest.skip(f"{name} is not installed" + (f" (or set {env_var})" if env_var else ""))
    return found


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# -- every YAML parses ------------------------------------------------------------------------

YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), COMPOSE])


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path: Path) -> None:
    documents = list(yaml.safe_load_all(path.read_text()))
    assert documents
    assert all(isinstance(d, dict) for d in documents)


def test_dashboard_is_json() -> None:
    assert isinstance(json.loads(DASHBOARD.read_text()), dict)


# -- Dockerfile ----------------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        word, _, rest = whole.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


@cache
def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of instructions starting with its FROM."""
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(DOCKERFILE.read_text()):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def final() -> list[tuple[str, str]]:
    return stages()[-1]


def args_of(name: str, stage: list[tuple[str, str]]) -> list[str]:
    return [a for i, a in stage if i == name]


def test_dockerfile_is_multi_stage_on_python_311_slim() -> None:
    assert len(stages()) >= 2
    base_args = dict(
        a.split("=", 1) for i, a in instructions(DOCKERFILE.read_text()) if i == "ARG" and "=" in a
    )
    for stage in stages():
        image = stage[0][1].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: base_args[m.group(1)], image)
        assert image == "python:3.11-slim"
    assert final()[0][1].split()[-1] != "builder"


def test_final_stage_runs_as_a_fixed_non_root_user() -> None:
    [user] = args_of("USER", final())
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), "numeric, so runAsNonRoot can check it"
    assert int(uid) != 0
    assert gid.isdigit()
    assert int(gid) != 0
    run_lines = " ".join(args_of("RUN", final()))
    assert f"--uid {uid}" in run_lines
    # the state directory belongs to that user
    assert re.search(rf"chown -R {uid}:{gid} /var/lib/oscc-bridge", run_lines)
    # nothing after USER runs as root again
    after = final()[[i for i, _ in final()].index("USER") :]
    assert [a for i, a in after if i == "USER"] == [user]


def test_no_compiler_or_installer_in_the_final_stage() -> None:
    text = " ".join(a for _, a in final())
    for word in (
        "gcc",
        "g++",
        "build-essential",
        "clang",
        "make ",
        "apt-get install",
        "pip install",
    ):
        assert word not in text, word
    copies = args_of("COPY", final())
    assert any(c.startswith("--from=builder /opt/venv") for c in copies)


def test_builder_drops_pip_and_setuptools_from_the_venv() -> None:
    builder = " ".join(args_of("RUN", stages()[0]))
    assert "pip uninstall" in builder
    assert "setuptools" in builder


def test_healthcheck_entrypoint_cmd_expose_volume() -> None:
    [health] = args_of("HEALTHCHECK", final())
    assert "CMD" in health
    env = " ".join(args_of("ENV", final()))
    assert "OSCC_BRIDGE_HEALTH_URL=http://127.0.0.1:8080/healthz" in env
    assert "curl" not in health
    assert "wget" not in health
    assert json.loads(args_of("ENTRYPOINT", final())[0]) == ["oscc-bridge"]
    cmd = json.loads(args_of("CMD", final())[0])
    assert cmd == ["run", "--config", "/etc/oscc-bridge/bridge.toml"]
    assert args_of("EXPOSE", final()) == ["8080"]
    [volume] = args_of("VOLUME", final())
    assert json.loads(volume) == ["/var/lib/oscc-bridge"]
    [workdir] = args_of("WORKDIR", final())
    # the default spool.dir ("var/spool", relative) lands inside the volume
    assert (Path(workdir) / config.SpoolConfig().dir).is_relative_to("/var/lib/oscc-bridge")


def healthcheck_argv() -> list[str]:
    [health] = args_of("HEALTHCHECK", final())
    argv: list[str] = json.loads(health[health.index("CMD") + 3 :].strip())
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[str, type[_Health]]]:
    handler = type("Handler", (_Health,), {"status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/healthz", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_healthcheck_command_passes_on_200_and_fails_otherwise(
    health_server: tuple[str, type[_Health]],
) -> None:
    """The HEALTHCHECK's own command line, run here against a real HTTP server."""
    url, handler = health_server
    argv = healthcheck_argv()

    def probe(target: str) -> int:
        env = {**os.environ, "OSCC_BRIDGE_HEALTH_URL": target}
        return subprocess.run(
            argv, env=env, capture_output=True, timeout=30, check=False
        ).returncode

    assert probe(url) == 0
    handler.status = 503
    assert probe(url) != 0
    assert probe(url.replace("/healthz", "/nowhere")) != 0
    handler.status = 200
    refused = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    port = refused.server_address[1]
    refused.server_close()  # nothing listens there now
    assert probe(f"http://127.0.0.1:{port}/healthz") != 0


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (last match wins)."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        patterns = [pattern, pattern.removeprefix("**/")]
        hit = any(
            fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p + "/*") for p in patterns
        ) or any(fnmatch.fnmatch(part, pattern.removeprefix("**/")) for part in path.split("/"))
        if hit:
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_the_image_copies_and_drops_the_rest() -> None:
    sources = []
    for stage in stages():
        for arguments in args_of("COPY", stage):
            if arguments.startswith("--from"):
                continue
            sources += arguments.split()[:-1]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        files = (
            [source]
            if (ROOT / source).is_file()
            else [str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*.py")]
        )
        for file in files:
            assert not dockerignore_excludes(file), file
    for outside in (".venv/bin/python", ".git/HEAD", "var/spool/x", "tests/test_deploy.py"):
        assert dockerignore_excludes(outside), outside
    assert dockerignore_excludes("bridge/__pycache__/config.cpython-311.pyc")


def test_console_script_of_the_entrypoint_exists() -> None:
    assert 'oscc-bridge = "bridge.cli:main"' in (ROOT / "pyproject.toml").read_text()


def test_hadolint_finds_nothing() -> None:
    hadolint = tool("hadolint", "HADOLINT")
    result = run(hadolint, "--no-color", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


# -- docker-compose.yml -------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(COMPOSE)
    return loaded


def test_compose_services_and_healthchecks() -> None:
    services = compose()["services"]
    assert set(services) == {"rabbitmq", "simulator", "bridge", "bridge-2", "jaeger"}
    assert services["rabbitmq"]["image"].startswith("rabbitmq:3-management")
    for name, service in services.items():
        if "profiles" not in service:  # the demo's own services; Jaeger is an extra
            assert service["healthcheck"]["test"][0] == "CMD", name
    sim, bridge = services["simulator"], services["bridge"]
    assert sim["command"] == ["simulator", "--host", "0.0.0.0", "--port", "8443"]
    assert sim["image"] == bridge["image"]
    assert sim["build"] == bridge["build"] == "."
    assert bridge["depends_on"] == {
        "rabbitmq": {"condition": "service_healthy"},
        "simulator": {"condition": "service_healthy"},
    }


def compose_bridge_config(shell: dict[str, str] | None = None) -> config.Config:
    """The bridge's configuration as the container sees it: mounted file plus env, whose
    ``${VAR:-default}`` compose fills in from `shell` (the variables of who runs it)."""
    bridge = compose()["services"]["bridge"]
    [mount] = [v for v in bridge["volumes"] if v.endswith(":/etc/oscc-bridge/bridge.toml:ro")]
    env = {
        k: re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: (shell or {}).get(m[1], m[2]), str(v))
        for k, v in bridge["environment"].items()
    }
    return config.load(ROOT / mount.split(":")[0], env)


def test_compose_bridge_config_points_at_the_services() -> None:
    cfg = compose_bridge_config()
    assert cfg.broker.url == "amqp://guest:guest@rabbitmq:5672/"
    assert cfg.oscc.url == "http://simulator:8443"
    assert cfg.http.public_url == "http://bridge:8080"
    assert cfg.http.host == "0.0.0.0"
    state = [v for v in compose()["services"]["bridge"]["volumes"] if v.startswith("bridge-state:")]
    assert state == ["bridge-state:/var/lib/oscc-bridge"]
    assert Path(cfg.spool.dir).is_relative_to("/var/lib/oscc-bridge")
    # the simulator accepts this token by default
    assert cfg.connectors[0].token == "HWJVUAZT1BGx3vBmnwUVUMAMZHKGWX"


def test_compose_runs_two_bridges_each_with_its_own_spool() -> None:
    services = compose()["services"]
    one, two = services["bridge"], services["bridge-2"]
    differ = {"volumes", "ports"}
    assert {k: v for k, v in one.items() if k not in differ} == {
        k: v for k, v in two.items() if k not in differ
    }
    state = {
        name: [v.split(":")[0] for v in s["volumes"] if v.endswith(":/var/lib/oscc-bridge")]
        for name, s in (("bridge", one), ("bridge-2", two))
    }
    assert state == {"bridge": ["bridge-state"], "bridge-2": ["bridge-2-state"]}
    assert set(compose()["volumes"]) >= {"bridge-state", "bridge-2-state"}
    assert [v for v in one["volumes"] if "bridge.toml" in v] == [
        v for v in two["volumes"] if "bridge.toml" in v
    ]
    assert {p.split(":")[1] for p in one["ports"] + two["ports"]} == {"8080", "8081"}
    assert "deploy" not in two  # replicas would share one named volume


def test_compose_tracing_profile_runs_jaeger_and_the_bridges_export_to_it() -> None:
    services = compose()["services"]
    jaeger = services["jaeger"]
    assert jaeger["profiles"] == ["tracing"]
    assert jaeger["image"].startswith("jaegertracing/all-in-one:")
    assert jaeger["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert "127.0.0.1:16686:16686" in jaeger["ports"]
    for name in ("bridge", "bridge-2"):
        env = services[name]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318", name
        assert "depends_on" not in services[name] or "jaeger" not in services[name]["depends_on"]
    # off unless asked for (without the profile there is no Jaeger to export to)
    assert not compose_bridge_config().tracing.enabled
    assert compose_bridge_config({"OSCC_TRACING": "true"}).tracing.enabled


def test_compose_healthchecks_probe_the_right_ports() -> None:
    services = compose()["services"]
    cfg = compose_bridge_config()
    assert f"127.0.0.1:{cfg.http.port}/readyz" in " ".join(
        services["bridge"]["healthcheck"]["test"]
    )
    assert "127.0.0.1:8443/admin" in " ".join(services["simulator"]["healthcheck"]["test"])
    assert "check_port_connectivity" in services["rabbitmq"]["healthcheck"]["test"]


def test_compose_file_is_valid_compose_spec(tmp_path: Path) -> None:
    checker = tool("check-jsonschema")
    result = run(checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr
    broken = copy.deepcopy(compose())
    broken["services"]["bridge"]["depends_on"]["rabbitmq"]["condition"] = "service_happy"
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(yaml.safe_dump(broken))
    assert run(checker, "--builtin-schema", "vendor.compose-spec", str(bad)).returncode != 0


def test_docker_compose_config() -> None:
    docker = tool("docker")
    if run(docker, "compose", "version").returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    result = run(docker, "compose", "-f", str(COMPOSE), "config", "--quiet")
    assert result.returncode == 0, result.stderr


# -- Kubernetes ---------------------------------------------------------------------------------


@cache
def manifests() -> dict[str, dict[str, Any]]:
    """kind -> the manifest of that kind (one of each)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] not in out
            out[doc["kind"]] = doc
    return out


def container() -> dict[str, Any]:
    [c] = manifests()["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    return c


def k8s_config() -> config.Config:
    """bridge.toml of the ConfigMap, with the environment the Secret gives it."""
    secret_env = manifests()["Secret"]["stringData"]
    return config.parse(manifests()["ConfigMap"]["data"]["bridge.toml"], secret_env)


CRDS = {"ServiceMonitor", "PrometheusRule"}  # the Prometheus Operator's, not Kubernetes'
PROMETHEUS_RULE = K8S / "prometheusrule.yaml"
PROMETHEUS_RULE_HEAD = """\
# The rules of deploy/prometheus/alerts.yaml for the Prometheus Operator (needs its CRDs,
# like servicemonitor.yaml). Generated; tests/test_deploy.py fails when the two differ:
#   python tests/test_deploy.py prometheusrule > deploy/kubernetes/prometheusrule.yaml
"""


def prometheus_rule() -> str:
    """deploy/kubernetes/prometheusrule.yaml as it must be: alerts.yaml's groups."""
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "oscc-bridge"},
        "spec": load_yaml(ALERTS),
    }
    return PROMETHEUS_RULE_HEAD + yaml.safe_dump(doc, sort_keys=False, width=100)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert set(manifests()) == {
        "ConfigMap",
        "Secret",
        "StatefulSet",
        "PodDisruptionBudget",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
        "Ingress",
        "NetworkPolicy",
    }


def test_prometheus_rule_is_the_alert_rules() -> None:
    assert PROMETHEUS_RULE.read_text() == prometheus_rule()
    assert manifests()["PrometheusRule"]["spec"] == load_yaml(ALERTS)


def test_kustomize_can_override_the_image() -> None:
    """`images:` in the kustomization (or an overlay's, or `kustomize edit set image`)
    names the image the StatefulSet uses, so a registry/tag override reaches it."""
    kustomization = load_yaml(K8S / "kustomization.yaml")
    name = container()["image"].split(":")[0]
    [image] = kustomization["images"]
    assert image["name"] == name
    assert image["newName"]
    assert image["newTag"]


def test_kustomize_renders_an_image_override(tmp_path: Path) -> None:
    kubectl = tool("kubectl")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(K8S, overlay)],
                "images": [
                    {"name": "oscc-bridge", "newName": "registry.example/oscc", "newTag": "9.9"}
                ],
            }
        )
    )
    result = run(kubectl, "kustomize", "--load-restrictor=LoadRestrictionsNone", str(overlay))
    assert result.returncode == 0, result.stderr
    [workload] = [d for d in yaml.safe_load_all(result.stdout) if d["kind"] == "StatefulSet"]
    [c] = workload["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "registry.example/oscc:9.9"


def test_ingress_serves_the_webhook_over_tls() -> None:
    ingress = manifests()["Ingress"]["spec"]
    [tls] = ingress["tls"]
    [rule] = ingress["rules"]
    assert rule["host"] in tls["hosts"]
    assert tls["secretName"]
    [path] = rule["http"]["paths"]
    assert path["path"] == "/webhook/"  # never the admin endpoints
    backend = path["backend"]["service"]
    assert backend["name"] == manifests()["Service"]["metadata"]["name"]
    assert backend["port"]["name"] == "webhook"


def test_network_policy_keeps_the_admin_port_internal() -> None:
    policy = manifests()["NetworkPolicy"]["spec"]
    pod_labels = manifests()["StatefulSet"]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    by_port = {r["ports"][0]["port"]: r for r in policy["ingress"]}
    assert set(by_port) == {"webhook", "admin"}
    assert "from" not in by_port["webhook"]  # OSCC, through the ingress controller
    sources = by_port["admin"]["from"]
    assert sources  # an empty list would mean everyone
    assert all("ipBlock" not in s for s in sources)
    assert {"podSelector": {}} in sources  # this namespace
    for rule in policy["ingress"]:
        assert len(rule["ports"]) == 1


def test_systemd_unit(tmp_path: Path) -> None:
    import configparser

    path = DEPLOY / "systemd" / "oscc-bridge.service"
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(path.read_text())
    service = unit["Service"]
    assert service["ExecStart"].split()[1:] == ["run", "--config", "/etc/oscc-bridge/bridge.toml"]
    assert "check-config" in service["ExecStartPre"]
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "3"  # bad config: no restart loop
    assert service["KillSignal"] == "SIGTERM"
    assert service["User"] != "root"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    analyze = shutil.which("systemd-analyze")
    if analyze:
        result = run(analyze, "verify", "--man=no", str(path))
        # the binaries it names exist only where it is installed
        errors = [
            line
            for line in (result.stdout + result.stderr).splitlines()
            if line.strip() and "/opt/oscc-bridge" not in line and "oscc-bridge.service" in line
        ]
        assert errors == [], result.stdout + result.stderr


def test_compose_rabbitmq_does_not_clash_with_a_local_broker() -> None:
    compose = load_yaml(COMPOSE)
    ports = compose["services"]["rabbitmq"]["ports"]
    host_ports = {p.split(":")[-2] for p in ports}
    assert not host_ports & {"5672", "15672"}, ports


def test_configmap_parses_with_the_secrets_environment() -> None:
    cfg = k8s_config()
    secret = manifests()["Secret"]["stringData"]
    assert cfg.broker.url == secret["AMQP_URL"]  # the Secret's URL wins over the file's
    assert [c.token for c in cfg.connectors] == [
        secret["OSCC_FACEBOOK_TOKEN"],
        secret["OSCC_EMAIL_TOKEN"],
    ]
    assert cfg.log.format == "json"
    assert "change-me" not in manifests()["ConfigMap"]["data"]["bridge.toml"]


def test_configmap_needs_every_secret_var() -> None:
    secret = manifests()["Secret"]["stringData"]
    for var in secret:
        if var == "AMQP_URL":
            continue  # an override, not a ${VAR}
        with pytest.raises(config.ConfigError) as info:
            config.parse(
                manifests()["ConfigMap"]["data"]["bridge.toml"],
                {k: v for k, v in secret.items() if k != var},
            )
        assert info.value.key == var


def test_deployment_probes_ports_and_resources() -> None:
    cfg, c = k8s_config(), container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"webhook": cfg.http.port, "admin": cfg.http.admin_port}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    for kind in ("requests", "limits"):
        assert set(c["resources"][kind]) == {"cpu", "memory"}
    assert c["args"] == ["run", "--config", "/etc/oscc-bridge/bridge.toml"]
    assert {"secretRef": {"name": manifests()["Secret"]["metadata"]["name"]}} in c["envFrom"]


def test_statefulset_runs_two_replicas_apart_and_rolls() -> None:
    """Two instances, one owns each connector; a rolling update replaces one pod at a
    time, on different nodes when it can, and a drain never takes both."""
    spec = manifests()["StatefulSet"]["spec"]
    assert spec["replicas"] == 2
    assert spec["serviceName"] == manifests()["Service"]["metadata"]["name"]
    assert spec["updateStrategy"]["type"] == "RollingUpdate"
    assert spec["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    [term] = spec["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    pdb = manifests()["PodDisruptionBudget"]["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    # the spool's claims outlive the set: they may hold messages
    assert set(spec["persistentVolumeClaimRetentionPolicy"].values()) == {"Retain"}


def test_deployment_security_context() -> None:
    pod = manifests()["StatefulSet"]["spec"]["template"]["spec"]
    [user] = args_of("USER", final())
    uid = int(user.split(":")[0])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid == pod["securityContext"]["fsGroup"]
    assert pod["automountServiceAccountToken"] is False
    sc = container()["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]


def test_deployment_mounts_config_state_and_tmp() -> None:
    spec = manifests()["StatefulSet"]["spec"]
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    assert (
        volumes[mounts["/etc/oscc-bridge"]]["configMap"]["name"]
        == (manifests()["ConfigMap"]["metadata"]["name"])
    )
    # a claim per pod: each instance locks its own spool directory
    claims = {t["metadata"]["name"]: t["spec"] for t in spec["volumeClaimTemplates"]}
    state = claims[mounts["/var/lib/oscc-bridge"]]
    assert state["accessModes"] == ["ReadWriteOnce"]
    assert mounts["/var/lib/oscc-bridge"] not in volumes
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert Path(k8s_config().spool.dir).is_relative_to("/var/lib/oscc-bridge")


def test_service_and_servicemonitor_select_the_pods() -> None:
    pod_labels = manifests()["StatefulSet"]["spec"]["template"]["metadata"]["labels"]
    service = manifests()["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    container_ports = {p["name"] for p in container()["ports"]}
    assert {p["targetPort"] for p in service_ports.values()} <= container_ports
    monitor = manifests()["ServiceMonitor"]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in service_ports
    assert endpoint["path"] == "/metrics"


def test_kubectl_kustomize_renders() -> None:
    kubectl = tool("kubectl")
    result = run(kubectl, "kustomize", str(K8S))
    assert result.returncode == 0, result.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(result.stdout)]
    assert sorted(kinds) == sorted(manifests())


def test_manifests_validate_against_kubernetes_schemas() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    version = kv.latest_version()
    for kind, doc in manifests().items():
        if kind in CRDS:
            continue  # a CRD: its schema is not part of Kubernetes
        kv.validate(doc, version, strict=True)
    broken = copy.deepcopy(manifests()["StatefulSet"])
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnly"] = True
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, version, strict=True)


# -- metrics: dashboard and alert rules ------------------------------------------------------


@cache
def metric_labels() -> dict[str, set[str]]:
    """Every series name the bridge exposes -> its label names."""
    names: dict[str, set[str]] = {}
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
    }
    metrics = Metrics()
    for collector in list(metrics.registry._collector_to_names):  # every registered family
        for family in collector.describe():
            labels = set(getattr(collector, "_labelnames", ()))
            for suffix in suffixes[family.type]:
                extra = {"le"} if suffix == "_bucket" else set()
                names[family.name + suffix] = labels | extra
    return names


def families() -> set[str]:
    return {
        name
        for collector in Metrics().registry._collector_to_names
        for name in (f.name for f in collector.describe())
    }


_SERIES = re.compile(r"\b(oscc_bridge_[a-z_]+)(\{[^}]*\})?")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*\"")
_BY = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


def check_expr(expr: str) -> set[str]:
    """Assert every series `expr` names exists with the labels it matches on; return the
    metric families it uses."""
    used = set()
    for name, matchers in _SERIES.findall(expr):
        assert name in metric_labels(), f"{name} is not in bridge/metrics.py: {expr}"
        allowed = metric_labels()[name] | {"instance", "job"}
        for label, _ in _MATCHER.findall(matchers):
            assert label in allowed, f"{name} has no label {label!r}: {expr}"
        used.add(name)
    return used


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return exprs


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def family_of(series: str) -> str:
    for name in sorted(families(), key=len, reverse=True):
        if series.startswith(name):
            return name
    raise AssertionError(series)


def test_metrics_are_what_the_artefacts_expect() -> None:
    """Sanity of the helper: the series names it builds for known families."""
    labels = metric_labels()
    assert labels["oscc_bridge_session_state"] == {"connector", "state"}
    assert "oscc_bridge_webhook_duration_seconds_bucket" in labels
    assert "oscc_bridge_dead_letters_total" in labels
    assert "oscc_bridge_spool_messages_total" not in labels


def test_dashboard_metrics_exist_and_cover_every_family() -> None:
    used: set[str] = set()
    for expr in dashboard_exprs():
        used |= check_expr(expr)
    assert {family_of(s) for s in used} == families()


PROMETHEUS_OWN = re.compile(r'^(?:absent\()?up\{job="oscc-bridge"\}\)?(?: == 0)?$')


def test_alert_metrics_exist() -> None:
    for rule in alert_rules():
        if PROMETHEUS_OWN.match(rule["expr"].strip()):
            continue  # Prometheus' own `up`, for the Service the ServiceMonitor scrapes
        assert check_expr(rule["expr"]), rule["alert"]
    for test in load_yaml(ALERT_TESTS)["tests"]:
        for series in test["input_series"]:
            check_expr(series["series"])


def test_check_expr_catches_wrong_names_and_labels() -> None:
    with pytest.raises(AssertionError):
        check_expr("rate(oscc_bridge_no_such_total[5m])")
    with pytest.raises(AssertionError):
        check_expr('oscc_bridge_spool_messages{connector="x"}')
    check_expr('oscc_bridge_session_state{connector=~"$connector",instance=~"$instance"}')


def test_alerts_the_operator_needs() -> None:
    rules = {r["alert"]: r for r in alert_rules()}
    registered = rules["OsccBridgeConnectorNotRegistered"]
    # per connector across instances: a standby never holds the session
    assert registered["expr"].strip() == (
        'max by (connector) (oscc_bridge_session_state{state=~"registered|degraded"}) == 0'
    )
    assert registered["for"] == "2m"
    assert rules["OsccBridgeConnectorDegraded"]["expr"].strip() == (
        'oscc_bridge_session_state{state="degraded"} == 1'
    )
    # down, and not scraped at all; the job is the Service the ServiceMonitor scrapes
    assert rules["OsccBridgeDown"]["expr"].strip() == 'up{job="oscc-bridge"} == 0'
    assert rules["OsccBridgeNotScraped"]["expr"].strip() == 'absent(up{job="oscc-bridge"})'
    assert manifests()["Service"]["metadata"]["name"] == "oscc-bridge"
    assert "jobLabel" not in manifests()["ServiceMonitor"]["spec"]
    exprs = " ".join(r["expr"] for r in rules.values())
    for needed in (
        "oscc_bridge_spool_messages",
        "oscc_bridge_dead_letters_total",
        "oscc_bridge_broker_connected == 0",
    ):
        assert needed in exprs
    for rule in rules.values():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description"} <= set(rule["annotations"])


def test_alert_unit_tests_cover_every_rule() -> None:
    tested = {
        case["alertname"]
        for test in load_yaml(ALERT_TESTS)["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert tested == {r["alert"] for r in alert_rules()}


def test_promtool_checks_and_tests_the_rules() -> None:
    promtool = tool("promtool", "PROMTOOL")
    result = run(promtool, "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    result = run(promtool, "test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_structure() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "instance", "connector"}
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"panel {panel['title']!r} overlaps another"
        cells |= mine
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            for var in re.findall(r"\$(\w+)", target["expr"]):
                assert var in variables | {"__rate_interval"}, var
    assert {p["type"] for p in panels} <= {"row", "timeseries", "stat"}


if __name__ == "__main__" and sys.argv[1:] == ["prometheusrule"]:
    sys.stdout.write(prometheus_rule())
