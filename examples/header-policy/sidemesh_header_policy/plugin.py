"""The policy and the hook that registers it."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any, ClassVar

from sidemesh import Attempt, Policy, PolicyContext, Request, Response, hookimpl

__all__ = ["HeaderPolicy", "sidemesh_policies"]


class HeaderPolicy(Policy):
    """Enforces and rewrites headers. Config: see schema.json."""

    name = "headers"
    schema: ClassVar[dict[str, Any]] = json.loads(
        files(__package__).joinpath("schema.json").read_text()
    )

    def __init__(self, config: dict[str, Any], context: PolicyContext) -> None:
        super().__init__(config, context)
        # Compiled once per config: the request path only reads these.
        self.deny = tuple(config["deny_paths"])
        self.require = tuple(h.lower() for h in config["require"])

    def on_request(self, request: Request) -> Response | None:
        if self.deny and request.path_only.startswith(self.deny):
            return Response.json(403, {"error": "forbidden", "path": request.path_only})
        missing = [h for h in self.require if h not in request.headers]
        if missing:
            return Response.json(400, {"error": "missing required headers", "headers": missing})
        for name in self.config["remove"]:
            request.headers.remove(name)
        for name, value in self.config["add"].items():
            request.headers.set(name, value)
        return None

    def on_response(self, request: Request, attempt: Attempt) -> None:
        if attempt.response is not None:
            for name, value in self.config["response_add"].items():
                attempt.response.headers.set(name, value)


@hookimpl
def sidemesh_policies() -> list[type[Policy]]:
    return [HeaderPolicy]
