"""Kubernetes: ``sidemesh inject`` (the sidecar added to workload manifests, as
``istioctl kube-inject`` does) and the ``proxy`` options of the status port that the
injected probes and Prometheus use.

Registering imports argparse and the constants of :mod:`.spec`: the injector loads when
the command runs."""

from __future__ import annotations

import argparse
from typing import Any

from sidemesh import __version__
from sidemesh.tools.kube.spec import DEFAULT_CONTROL, DEFAULT_IMAGE, STATUS_PORT

__all__ = ["DEFAULT_CONTROL", "DEFAULT_IMAGE", "STATUS_PORT", "register", "status_arguments"]

EPILOG = f"""\
examples:
  sidemesh inject -f deploy.yaml -o injected.yaml --image registry.internal/sidemesh:{__version__}
  kubectl get deploy reviews-v1 -o yaml | sidemesh inject -f - | kubectl apply -f -

Every Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job,
CronJob and Pod gets the sidemesh-proxy container; everything else passes through.
Injecting again gives the same output. A pod template annotated
sidemesh.dev/inject: "false" is left alone. docs/kubernetes.md has the details.
"""


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return port


def status_arguments(p: argparse.ArgumentParser) -> None:
    """``--status-port`` and ``--status-address`` of ``sidemesh proxy``."""
    p.add_argument("--status-port", type=_port, metavar="PORT",
                   help=f"serve GET /healthz/ready (kubelet) and GET /stats/prometheus on this "
                   f"port, and nothing else (injected pods: {STATUS_PORT}; default: off)")
    p.add_argument("--status-address", default="0.0.0.0", metavar="HOST",
                   help="the status port's host (default 0.0.0.0: reachable from the pod "
                   "network, unlike the admin API)")


def _run(args: argparse.Namespace) -> int:
    from sidemesh.tools.kube.command import main

    return main(args)


def register(sub: Any) -> None:
    """Add ``inject`` to the sub-parsers of ``sidemesh``."""
    p = sub.add_parser(
        "inject", help="add the sidecar to Kubernetes workload manifests",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Add the sidemesh-proxy container, its credentials volume and its "
        "readiness probe to the pod templates of Kubernetes manifests, as istioctl "
        "kube-inject does; the result goes to stdout or -o FILE.")
    p.add_argument("-f", "--filename", required=True, metavar="FILE",
                   help="YAML manifests (several documents separated by '---', or a List); "
                   "- reads stdin")
    p.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    p.add_argument("--image", default=DEFAULT_IMAGE, metavar="IMAGE",
                   help=f"the sidecar's image (default {DEFAULT_IMAGE}, a placeholder)")
    p.add_argument("--control", default=DEFAULT_CONTROL, metavar="URL[,URL...]",
                   help=f"the control plane the sidecars follow (default {DEFAULT_CONTROL})")
    p.add_argument("--native-sidecar", action="store_true",
                   help="run the proxy as a Kubernetes native sidecar (an init container "
                   "with restartPolicy: Always, Kubernetes 1.29+): it starts before the app "
                   "and does not keep a Job from completing")
    p.add_argument("--capture", action="store_true",
                   help="add the sidemesh-init container that redirects the pod's traffic "
                   "through the proxy with 'sidemesh iptables', as istio-init does (the "
                   "sidecar's listeners need use_original_dst)")

    def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
        from sidemesh.config.build import control_urls

        try:
            control_urls(args.control)
        except ValueError as exc:
            parser.error(f"--control: {exc}")

    p.set_defaults(handler=_run, check=check, parser=p)
