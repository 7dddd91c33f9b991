"""``sidemesh inject`` and the Kubernetes manifests of deploy/kubernetes/: every output
validated offline against the Kubernetes OpenAPI schemas (kubernetes-validate, strict:
an unknown or misspelt field fails), injection idempotent to the byte, and the injected
sidecar's arguments accepted by the real ``sidemesh proxy``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sidemesh import __version__
from sidemesh.testing import run_cli, validate_config
from sidemesh.tools.cli import build_parser
from sidemesh.tools.kube.command import dump, inject_text, load
from sidemesh.tools.kube.inject import InjectError, inject
from sidemesh.tools.kube.spec import Options

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "kubernetes"
CONFORMANCE = ROOT / ".." / "shared" / "conformance"
#: The oldest Kubernetes the manifests are for (native sidecars are on by default there).
KUBERNETES = "1.29"

DEPLOYMENT = """\
# a comment
apiVersion: apps/v1
kind: Deployment
metadata:
  name: reviews-v1
  labels: {app: reviews, version: v1}
spec:
  replicas: 1
  selector:
    matchLabels: {app: reviews, version: v1}
  template:
    metadata:
      labels: {app: reviews, version: v1, released: 2024-01-01}
    spec:
      serviceAccountName: bookinfo-reviews
      containers:
      - name: reviews
        image: docker.io/istio/examples-bookinfo-reviews-v1:1.20.1
        env:
        - {name: LOG_DIR, value: /tmp/logs}
        ports:
        - containerPort: 9080
        volumeMounts:
        - {name: tmp, mountPath: /tmp}
      volumes:
      - name: tmp
        emptyDir: {}
"""

POD_TEMPLATE = {
    "metadata": {"labels": {"app": "batch"}},
    "spec": {"restartPolicy": "Never",
             "containers": [{"name": "main", "image": "busybox:1.36", "args": ["true"]}]},
}

WORKLOADS = [
    {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
     "spec": {"serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
              "template": {"metadata": {"labels": {"app": "db"}},
                           "spec": {"containers": [{"name": "db", "image": "postgres:16"}]}}}},
    {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
     "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "agent"}},
              "template": {"metadata": {"labels": {"app.kubernetes.io/name": "agent"}},
                           "spec": {"containers": [{"name": "a", "image": "agent:1"}]}}}},
    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "rs"},
     "spec": {"selector": {"matchLabels": {"app": "rs"}},
              "template": {"metadata": {"labels": {"app": "rs"}},
                           "spec": {"containers": [{"name": "a", "image": "rs:1"}]}}}},
    {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "once"},
     "spec": {"template": POD_TEMPLATE}},
    {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"},
     "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": POD_TEMPLATE}}}},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "solo"},
     "spec": {"containers": [{"name": "a", "image": "solo:1"}]}},
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
     "data": {"a": "1"}},
]


def _valid(doc: dict[str, Any]) -> None:
    if doc.get("kind") == "List":
        for item in doc["items"]:
            _valid(item)
        return
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def _pod(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "Pod":
        return doc
    if doc["kind"] == "CronJob":
        return dict(doc["spec"]["jobTemplate"]["spec"]["template"])
    return dict(doc["spec"]["template"])


def _container(pod: dict[str, Any], name: str, key: str = "containers") -> dict[str, Any]:
    [found] = [c for c in pod["spec"].get(key, []) if c["name"] == name]
    return dict(found)


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidemesh", "inject", *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_a_deployment_gets_the_sidecar_and_keeps_everything_else() -> None:
    out, report = inject_text(DEPLOYMENT, Options())
    [doc] = load(out)
    _valid(doc)
    assert report == ["Deployment/reviews-v1: injected (service reviews)"]
    pod = _pod(doc)
    proxy = _container(pod, "sidemesh-proxy")
    assert proxy["image"] == f"registry.example/sidemesh:{__version__}"
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    assert proxy["securityContext"]["runAsUser"] == 1337
    assert proxy["securityContext"]["runAsNonRoot"] is True
    assert pod["metadata"]["annotations"]["sidemesh.dev/status"] == "injected"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "15021"
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/stats/prometheus"
    assert "initContainers" not in pod["spec"]
    credentials = next(v for v in pod["spec"]["volumes"] if v["name"] == "sidemesh-credentials")
    sources = credentials["projected"]["sources"]
    assert sources[0]["secret"]["name"] == "sidemesh-token-reviews"
    assert sources[1]["configMap"]["name"] == "sidemesh-ca-root-cert"

    # Take out what was added: what is left is the input, keys in their order, the date
    # label still the string it was.
    pod["spec"]["containers"] = [c for c in pod["spec"]["containers"]
                                 if c["name"] != "sidemesh-proxy"]
    pod["spec"]["volumes"] = [v for v in pod["spec"]["volumes"]
                              if not v["name"].startswith("sidemesh-")]
    del pod["metadata"]["annotations"]
    assert dump([doc]) == dump(load(DEPLOYMENT))
    assert "released: '2024-01-01'" in out


def test_the_injected_arguments_are_accepted_by_sidemesh_proxy() -> None:
    [doc] = load(inject_text(DEPLOYMENT, Options())[0])
    proxy = _container(_pod(doc), "sidemesh-proxy")
    env = {"$(POD_NAME)": "reviews-v1-5d8f9-abcde", "$(POD_NAMESPACE)": "default"}
    argv = [env.get(a, a).replace("$(POD_NAME).$(POD_NAMESPACE)", "reviews-v1-5d8f9.default")
            for a in proxy["args"]]
    args = build_parser().parse_args(argv)
    args.check(args.parser, args)
    assert (args.service, args.status_port, args.status_address) == ("reviews", 15021, "0.0.0.0")
    assert args.control == "https://sidemesh-control.sidemesh-system.svc:15010"
    assert args.control_ca == "/var/run/secrets/sidemesh/ca.pem"
    assert args.token_file == "/var/run/secrets/sidemesh/token"
    mounts = {m["mountPath"] for m in proxy["volumeMounts"]}
    assert {"/var/run/secrets/sidemesh", args.state_dir, "/tmp"} <= mounts


def test_every_workload_kind_is_injected_and_the_rest_passes_through() -> None:
    text = dump([*WORKLOADS, {"apiVersion": "v1", "kind": "List", "items": WORKLOADS[:2]}])
    out, report = inject_text(text, Options())
    docs = load(out)
    for doc in docs:
        _valid(doc)
    services = {d["metadata"]["name"]: _container(_pod(d), "sidemesh-proxy")["args"]
                for d in docs[:6]}
    assert {name: args[args.index("--service") + 1] for name, args in services.items()} == {
        "db": "db", "agent": "agent", "rs": "rs", "once": "batch", "nightly": "batch",
        "solo": "solo"}
    assert docs[6] == WORKLOADS[6]
    for item in docs[7]["items"]:
        assert _container(_pod(item), "sidemesh-proxy")
    # A Job's pod never completes with a proxy still running beside it: said.
    assert "Job/once: warning: the proxy keeps running" in "\n".join(report)


def test_injecting_twice_is_injecting_once_to_the_byte() -> None:
    text = DEPLOYMENT + "---\n" + dump(WORKLOADS)
    once = _cli("-f", "-", stdin=text)
    assert once.returncode == 0, once.stderr
    twice = _cli("-f", "-", stdin=once.stdout)
    assert twice.returncode == 0, twice.stderr
    assert twice.stdout == once.stdout
    for options in (Options(native=True), Options(capture=True),
                    Options(native=True, capture=True)):
        first = inject_text(text, options)[0]
        assert inject_text(first, options)[0] == first


@pytest.mark.parametrize("options", [Options(), Options(native=True, capture=True)])
def test_the_pod_spec_keeps_its_keys_in_their_order(options: Options) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"app": "p"}},
           "spec": {"volumes": [{"name": "data", "emptyDir": {}}],
                    "initContainers": [{"name": "migrate", "image": "m:1"}],
                    "containers": [{"name": "a", "image": "a:1"}],
                    "restartPolicy": "Always"}}
    once = inject_text(dump([pod]), options)[0]
    [doc] = load(once)
    assert list(doc["spec"]) == ["volumes", "initContainers", "containers", "restartPolicy"]
    assert doc["spec"]["volumes"][0]["name"] == "data"
    assert doc["spec"]["initContainers"][-1]["name"] == "migrate"
    assert inject_text(once, options)[0] == once


def test_injecting_again_with_other_options_replaces_the_sidecar() -> None:
    native = inject_text(DEPLOYMENT, Options(native=True, capture=True))[0]
    pod = _pod(load(native)[0])
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["sidemesh-init",
                                                                  "sidemesh-proxy"]
    assert _container(pod, "sidemesh-proxy", "initContainers")["restartPolicy"] == "Always"
    _valid(load(native)[0])

    plain = inject_text(native, Options(image="registry.internal/sidemesh:9.9"))[0]
    assert plain == inject_text(DEPLOYMENT, Options(image="registry.internal/sidemesh:9.9"))[0]
    pod = _pod(load(plain)[0])
    assert "initContainers" not in pod["spec"]
    assert [c["name"] for c in pod["spec"]["containers"]] == ["reviews", "sidemesh-proxy"]
    assert _container(pod, "sidemesh-proxy")["image"] == "registry.internal/sidemesh:9.9"


def test_the_capture_init_container_runs_as_root_with_net_admin_only() -> None:
    [doc] = load(inject_text(DEPLOYMENT, Options(capture=True))[0])
    _valid(doc)
    init = _container(_pod(doc), "sidemesh-init", "initContainers")
    assert init["args"][0] == "iptables"
    assert init["securityContext"]["runAsUser"] == 0
    assert init["securityContext"]["capabilities"] == {"add": ["NET_ADMIN", "NET_RAW"],
                                                       "drop": ["ALL"]}


def test_the_capture_init_container_runs_the_real_iptables_command(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "d.yaml").write_text(DEPLOYMENT)
    assert run_cli("inject", "-f", str(tmp_path / "d.yaml"), "--capture") == 0
    [doc] = load(capsys.readouterr().out)
    args = _container(_pod(doc), "sidemesh-init", "initContainers")["args"]
    assert "--apply" in args
    # The same arguments without --apply print the rules the container applies.
    assert run_cli(*[a for a in args if a != "--apply"]) == 0
    rules = capsys.readouterr().out
    assert "-A SIDEMESH_OUTPUT -m owner --uid-owner 1337 -j RETURN" in rules
    assert "-A SIDEMESH_INBOUND -p tcp --dport 15021 -j RETURN" in rules
    assert "REDIRECT --to-ports 15006" in rules and "REDIRECT --to-ports 15001" in rules


@pytest.mark.parametrize("where", ["annotations", "labels"])
def test_a_pod_that_opts_out_is_left_alone(where: str) -> None:
    doc = load(DEPLOYMENT)[0]
    doc["spec"]["template"]["metadata"].setdefault(where, {})["sidemesh.dev/inject"] = "false"
    out, report = inject_text(dump([doc]), Options())
    assert load(out) == [doc]
    assert report == [f'Deployment/reviews-v1: left alone (sidemesh.dev/inject: "false" '
                      f"({where[:-1]}))"]


def test_a_host_network_pod_is_left_alone_and_the_service_annotation_names_the_service() -> None:
    host = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "node-agent"},
            "spec": {"hostNetwork": True, "containers": [{"name": "a", "image": "a:1"}]}}
    named = {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": "x", "annotations": {"sidemesh.dev/service": "ratings"}},
             "spec": {"containers": [{"name": "a", "image": "a:1"}]}}
    out, report = inject_text(dump([host, named]), Options())
    docs = load(out)
    assert docs[0] == host and report[0] == "Pod/node-agent: left alone (hostNetwork: true)"
    args = _container(docs[1], "sidemesh-proxy")["args"]
    assert args[args.index("--service") + 1] == "ratings"


def test_resources_that_cannot_be_injected_are_errors_naming_them(tmp_path: Path) -> None:
    bad_name = dump([{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "Big_Name"},
                      "spec": {"containers": [{"name": "a", "image": "a:1"}]}}])
    with pytest.raises(InjectError, match=r"Pod/Big_Name: service name 'Big_Name'.*"
                       r"sidemesh.dev/service annotation"):
        inject_text(bad_name, Options())
    no_containers = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                     "spec": {"template": {"metadata": {"labels": {"app": "d"}}, "spec": {}}}}
    with pytest.raises(InjectError, match=r"Deployment/d: the pod template has no "
                       r"spec\.containers"):
        list(inject(no_containers, Options()))

    (tmp_path / "broken.yaml").write_text("kind: [\n")
    result = _cli("-f", str(tmp_path / "broken.yaml"))
    assert result.returncode == 1 and result.stdout == ""
    assert f"sidemesh inject: {tmp_path / 'broken.yaml'} is not YAML" in result.stderr
    assert "Traceback" not in result.stderr
    result = _cli("-f", str(tmp_path / "missing.yaml"))
    assert result.returncode == 1 and "cannot read" in result.stderr


def test_output_goes_to_the_file_given(tmp_path: Path) -> None:
    (tmp_path / "in.yaml").write_text(DEPLOYMENT)
    result = _cli("-f", str(tmp_path / "in.yaml"), "-o", str(tmp_path / "out.yaml"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert (tmp_path / "out.yaml").read_text() == inject_text(DEPLOYMENT, Options())[0]


# Istio's own file when shared/conformance has it; else the same resources as the tests
# keep them (tests/data/bookinfo-kube.yaml: Services, ServiceAccounts, six Deployments).
BOOKINFO = [*sorted((CONFORMANCE / "istio").rglob("bookinfo.yaml")),
            Path(__file__).parent / "data" / "bookinfo-kube.yaml"]


def test_istio_bookinfo_deployments_inject_validate_and_round_trip() -> None:
    text = BOOKINFO[0].read_text()
    once = _cli("-f", "-", stdin=text)
    assert once.returncode == 0, once.stderr
    docs = load(once.stdout)
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert len(deployments) >= 4
    for doc in docs:
        _valid(doc)
    for doc in deployments:
        assert _container(_pod(doc), "sidemesh-proxy")
    assert _cli("-f", "-", stdin=once.stdout).stdout == once.stdout


def test_the_manifests_validate_and_name_this_version() -> None:
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name.endswith(".sidemesh.yaml"):
            continue
        for doc in load(path.read_text()):
            _valid(doc)
    docs = {(d["kind"], d["metadata"]["name"]): d
            for d in load((MANIFESTS / "control-plane.yaml").read_text())}
    control = docs[("Deployment", "sidemesh-control")]
    assert control["spec"]["replicas"] >= 2
    assert docs[("PodDisruptionBudget", "sidemesh-control")]["spec"]["minAvailable"] == 1
    assert docs[("Service", "sidemesh-control")]["spec"]["ports"][0]["port"] == 15010
    [container] = control["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"registry.example/sidemesh:{__version__}"
    # Its arguments are the real command's, and the sidecars' default URL is one of the
    # names its certificate is issued for.
    store = docs[("ConfigMap", "sidemesh-control")]["data"]
    argv = [{"$(SIDEMESH_STORE)": store["store"],
             "$(SIDEMESH_STORE_PREFIX)": store["store-prefix"]}.get(a, a)
            for a in container["args"]]
    args = build_parser().parse_args(argv)
    assert args.store.startswith("etcd://")
    assert "sidemesh-control.sidemesh-system.svc" in args.tls_san
    assert control["spec"]["template"]["metadata"]["annotations"]["sidemesh.dev/inject"] == \
        "false"


def test_the_example_app_injects_and_its_sidecar_config_is_valid() -> None:
    text = (MANIFESTS / "example-app.yaml").read_text()
    out, report = inject_text(text, Options())
    assert report == ["Deployment/web: injected (service web)"]
    for doc in load(out):
        _valid(doc)
    config = yaml.safe_load((MANIFESTS / "example-app.sidemesh.yaml").read_text())
    assert validate_config(config) == []
    assert config["node"]["service"] == "web"
    service = next(d for d in load(text) if d["kind"] == "Service")
    inbound = next(x for x in config["listeners"] if x["name"] == "inbound")
    assert inbound["address"].endswith(f":{service['spec']['ports'][0]['targetPort']}")
