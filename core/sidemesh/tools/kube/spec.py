"""What ``sidemesh inject`` adds to a pod: the proxy container, the optional capture init
container and their volumes, as plain Kubernetes objects (dicts in the API's key order).

Names follow Istio's injector where one exists (``istio-proxy`` → ``sidemesh-proxy``,
``istio-init`` → ``sidemesh-init``, proxy uid 1337, status port 15021)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sidemesh import __version__

__all__ = [
    "CA_CONFIGMAP", "DEFAULT_CONTROL", "DEFAULT_IMAGE", "INIT", "PROXY", "PROXY_UID",
    "STATUS_PORT", "VOLUMES", "Options", "init_container", "proxy_container", "token_secret",
    "volumes",
]

#: Istio's pilot-agent readiness port; kubelet probes ``/healthz/ready`` there.
STATUS_PORT = 15021
#: A placeholder: build the image (Dockerfile at the repository root) and push it to a
#: registry of yours, then give ``--image``. The reserved ``.example`` domain never
#: resolves, so a forgotten ``--image`` fails to pull instead of pulling someone else's.
DEFAULT_IMAGE = f"registry.example/sidemesh:{__version__}"
#: The Service of deploy/kubernetes/control-plane.yaml.
DEFAULT_CONTROL = "https://sidemesh-control.sidemesh-system.svc:15010"

PROXY = "sidemesh-proxy"
INIT = "sidemesh-init"
CREDENTIALS, STATE, TMP = "sidemesh-credentials", "sidemesh-state", "sidemesh-tmp"
#: Every volume the injector owns: removed and added again on each injection.
VOLUMES = (CREDENTIALS, STATE, TMP)
#: Istio's proxy uid: the capture rules let this user's traffic out unredirected.
PROXY_UID = 1337
#: The listeners of the config that ``sidemesh import istio`` writes (Istio's ports).
INBOUND_PORT, OUTBOUND_PORT = 15006, 15001
#: The control plane's CA bundle (``sidemesh control --print-ca``), one per namespace,
#: as Istio's ``istio-ca-root-cert``.
CA_CONFIGMAP = "sidemesh-ca-root-cert"
CREDENTIALS_DIR = "/var/run/secrets/sidemesh"
STATE_DIR = "/var/lib/sidemesh"


@dataclass(frozen=True)
class Options:
    image: str = DEFAULT_IMAGE
    #: ``--control``: one URL or several separated by commas.
    control: str = DEFAULT_CONTROL
    #: The proxy as a native sidecar (an init container with ``restartPolicy: Always``).
    native: bool = False
    #: Add the ``sidemesh-init`` container that redirects the pod's traffic.
    capture: bool = False

    @property
    def tls(self) -> bool:
        return any(url.strip().startswith("https://") for url in self.control.split(","))


def token_secret(service: str) -> str:
    """The Secret holding ``service``'s sidecar token (key ``token``)."""
    return f"sidemesh-token-{service}"


def _hardened(**extra: Any) -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, **extra}


def proxy_container(service: str, options: Options) -> dict[str, Any]:
    args = ["proxy", "--control", options.control]
    if options.tls:
        args += ["--control-ca", f"{CREDENTIALS_DIR}/ca.pem"]
    args += [
        "--service", service,
        "--token-file", f"{CREDENTIALS_DIR}/token",
        "--state-dir", STATE_DIR,
        "--proxy-id", "$(POD_NAME).$(POD_NAMESPACE)",
        "--status-port", str(STATUS_PORT),
    ]
    container: dict[str, Any] = {
        "name": PROXY,
        "image": options.image,
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE",
             "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ],
        "ports": [{"name": "sidemesh-status", "containerPort": STATUS_PORT,
                   "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/healthz/ready", "port": STATUS_PORT},
            "periodSeconds": 2,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        # Istio's defaults; no CPU limit: a throttled proxy adds latency to every request.
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                      "limits": {"memory": "1Gi"}},
        "securityContext": _hardened(
            runAsUser=PROXY_UID, runAsGroup=PROXY_UID, runAsNonRoot=True,
            capabilities={"drop": ["ALL"]}),
        "volumeMounts": [
            {"name": CREDENTIALS, "mountPath": CREDENTIALS_DIR, "readOnly": True},
            {"name": STATE, "mountPath": STATE_DIR},
            # The mtls plugin hands its key to the ssl module through a temporary file.
            {"name": TMP, "mountPath": "/tmp"},
        ],
    }
    if options.native:
        container["restartPolicy"] = "Always"
    return container


def init_container(options: Options) -> dict[str, Any]:
    """``sidemesh-init``: redirects the pod's inbound and outbound TCP to the proxy's
    listeners, except the proxy's own traffic (uid 1337) and the status port, as
    ``istio-init`` does. Root with NET_ADMIN and NET_RAW, for the time it runs."""
    return {
        "name": INIT,
        "image": options.image,
        "imagePullPolicy": "IfNotPresent",
        "args": [
            "iptables", "--apply",
            "--uid", str(PROXY_UID),
            "--inbound-port", str(INBOUND_PORT),
            "--outbound-port", str(OUTBOUND_PORT),
            "--exclude-inbound-ports", str(STATUS_PORT),
        ],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
        "securityContext": _hardened(
            runAsUser=0, runAsGroup=0, runAsNonRoot=False,
            capabilities={"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}),
    }


def volumes(service: str, options: Options) -> list[dict[str, Any]]:
    sources: list[dict[str, Any]] = [
        {"secret": {"name": token_secret(service), "items": [{"key": "token", "path": "token"}]}}
    ]
    if options.tls:
        sources.append({"configMap": {"name": CA_CONFIGMAP,
                                      "items": [{"key": "ca.pem", "path": "ca.pem"}]}})
    return [
        {"name": CREDENTIALS, "projected": {"sources": sources}},
        {"name": STATE, "emptyDir": {}},
        {"name": TMP, "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
    ]
