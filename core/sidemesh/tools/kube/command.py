"""``sidemesh inject``: read manifests, inject, write them back in the same order."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from sidemesh.tools.kube.inject import InjectError, inject
from sidemesh.tools.kube.spec import Options

__all__ = ["dump", "inject_text", "load", "main"]

PROG = "sidemesh inject"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


class _Loader(yaml.SafeLoader):
    """Dates stay the strings they were (a ``version: 2024-01-01`` label), as Kubernetes
    reads them."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class _Dumper(yaml.SafeDumper):
    """Values used twice are written twice: anchors and aliases would not survive a
    ``kubectl`` edit."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def load(text: str) -> list[Any]:
    """The YAML documents of ``text``, empty ones left out (as kubectl does).

    :raises yaml.YAMLError: when it is not YAML.
    """
    return [doc for doc in yaml.load_all(text, Loader=_Loader) if doc is not None]


def dump(docs: list[Any]) -> str:
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                         allow_unicode=True, width=1 << 16)


def inject_text(text: str, options: Options) -> tuple[str, list[str]]:
    """``text`` (manifests) with the sidecar injected, and one line per resource about
    what was done.

    :raises yaml.YAMLError: when ``text`` is not YAML.
    :raises InjectError: for a resource that cannot be injected.
    """
    docs = load(text)
    report: list[str] = []
    for doc in docs:
        for outcome in inject(doc, options):
            if outcome.service is None:
                report.append(f"{outcome.resource}: left alone ({outcome.note})")
                continue
            report.append(f"{outcome.resource}: injected (service {outcome.service})")
            if outcome.note:
                report.append(f"{outcome.resource}: warning: {outcome.note}")
    return dump(docs), report


def main(args: argparse.Namespace) -> int:
    source = "stdin" if args.filename == "-" else args.filename
    try:
        text = sys.stdin.read() if args.filename == "-" else Path(args.filename).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{PROG}: cannot read {source}: {exc}", file=sys.stderr)
        return 1
    options = Options(image=args.image, control=args.control, native=args.native_sidecar,
                      capture=args.capture)
    try:
        out, report = inject_text(text, options)
    except yaml.YAMLError as exc:
        print(f"{PROG}: {source} is not YAML: {exc}", file=sys.stderr)
        return 1
    except InjectError as exc:
        print(f"{PROG}: {source}: {exc}", file=sys.stderr)
        return 1
    for line in report:
        print(f"{PROG}: {line}", file=sys.stderr)
    if args.output:
        try:
            Path(args.output).write_text(out)
        except OSError as exc:
            print(f"{PROG}: cannot write {args.output}: {exc}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(out)
    return 0
