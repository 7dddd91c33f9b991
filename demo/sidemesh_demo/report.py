"""The demo's summary: what the sidecars measured, as tables, panels and a trace tree."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from .config import CIRCUIT, spiffe_id
from .evidence import Evidence, GrpcCall, percentile
from .ratings import GET_METHOD

__all__ = ["render", "render_trace"]


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _split(ev: Evidence) -> Table:
    table = Table(title="Traffic split: configured vs observed (productpage sidecar, "
                  "sidemesh_split_requests_total)", title_justify="left", expand=False)
    table.add_column("destination")
    table.add_column("configured", justify="right")
    table.add_column("observed", justify="right")
    table.add_column("requests", justify="right")
    observed = sum(ev.split.values())
    weights = sum(ev.configured.values())
    for dest in sorted(set(ev.configured) | set(ev.split)):
        table.add_row(dest, _pct(ev.configured.get(dest, 0), weights),
                      f"[bold]{_pct(ev.split.get(dest, 0), observed)}[/bold]",
                      str(int(ev.split.get(dest, 0))))
    return table


def _endpoints(ev: Evidence) -> Table:
    table = Table(title="reviews endpoints (each reviews sidecar's own /metrics and access "
                  "log; ejections from productpage's /clusters)", title_justify="left")
    for column in ("instance", "version", "address"):
        table.add_column(column)
    for column in ("answered 2xx", "answered 5xx", "times ejected"):
        table.add_column(column, justify="right")
    for view in ev.instances:
        ok = sum(n for code, n in view.served.items() if 200 <= code < 300)
        bad = sum(n for code, n in view.served.items() if code >= 500)
        name = view.instance.name
        if view.instance == ev.broken:
            name = f"[bold red]{name}[/bold red] (broken on purpose)"
        table.add_row(name, view.instance.version, view.address, str(ok),
                      f"[red]{bad}[/red]" if bad else "0", str(view.ejection_count))
    return table


def _resilience(ev: Evidence, t_scale: str = "s") -> Panel:
    codes = ev.entry_codes
    answered = sum(codes.values())
    ok = sum(n for code, n in codes.items() if 200 <= code < 300)
    lines = Text()
    lines.append("Clients of productpage (its sidecar's inbound listener): ", style="bold")
    lines.append(f"{ok}/{answered} answered 2xx ({_pct(ok, answered)})\n")
    failed = {code: n for code, n in codes.items() if not 200 <= code < 300}
    if failed:
        lines.append("  not 2xx: " + ", ".join(f"{n}x {c}" for c, n in sorted(failed.items()))
                     + "\n")
    lines.append("Retries (productpage → reviews): ", style="bold")
    lines.append(f"{int(ev.retries['asked'])} retries asked, ")
    lines.append(f"{int(ev.retries['saved'])} requests saved by a retry",
                 style="bold green")
    lines.append(f", {int(ev.retries['overflow'])} not retried (budget/limit); "
                 f"{int(ev.retries['attempts'])} attempts in all\n")
    lines.append("Outlier detection: ", style="bold")
    reasons = ", ".join(f"{int(n)} by {r}" for r, n in ev.ejection_reasons.items()) or "none"
    lines.append(f"ejections {reasons} (consecutive_5xx={CIRCUIT['consecutive_5xx']}, "
                 f"base_ejection_time={CIRCUIT['base_ejection_time']}, "
                 f"max_ejection_percent={CIRCUIT['max_ejection_percent']})\n")
    names = {v.address: v.instance.name for v in ev.instances}
    names[ev.scaling.address] = ev.scaling.instance.name
    for event in ev.events:
        name = names.get(event.address, event.address)
        if event.returned_at is None:
            back = "still ejected at the end"
        elif event.again:
            back = f"came back still failing, ejected again at t={event.returned_at:.1f}s"
        else:
            back = (f"back at t={event.returned_at:.1f}{t_scale} "
                    f"(out for {event.returned_at - event.ejected_at:.1f}s)")
        lines.append(f"  {name} ({event.address}) ejected at t={event.ejected_at:.1f}"
                     f"{t_scale} (ejection #{event.number}, ~{event.seconds:.0f}s), {back}\n",
                     style="red" if event.returned_at is None else "")
    _scaling(ev, lines)
    lines.append("Latency (productpage sidecar access log, 2xx): ", style="bold")
    parts = []
    for listener, label in (("inbound", "end to end"), ("outbound", "productpage → reviews")):
        values = ev.latency_ms.get(listener, [])
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        if p50 is not None and p99 is not None:
            parts.append(f"{label} p50 {p50:.1f} ms, p99 {p99:.1f} ms ({len(values)} requests)")
    lines.append("; ".join(parts) or "no access-log lines")
    return Panel(lines, title="What the mesh absorbed", title_align="left")


def _at(t: float | None) -> str:
    return "never" if t is None else f"t={t:.1f}s"


def _scaling(ev: Evidence, lines: Text) -> None:
    sc = ev.scaling
    lines.append("Discovery (service: reviews, as productpage's sidecar listed it in /clusters):\n",
                 style="bold")
    lines.append(f"  {sc.instance.name} ({sc.address}) registered, added at "
                 f"{_at(sc.joined_at)}, answered {sc.served} requests\n")
    lines.append(f"  {sc.instance.name} SIGTERM at {_at(sc.stopped_at)}: deregistered, removed "
                 f"at {_at(sc.left_at)}, drained, exited {sc.exit_code} at {_at(sc.exited_at)}\n")
    failed = sc.failed
    lines.append(f"  while reviews scaled 3 → 4 → 3: {failed} of {sc.traffic.sent} requests "
                 "failed\n", style="bold red" if failed else "bold green")


def _identities(ev: Evidence) -> Panel:
    text = Text()
    for view in ev.instances:
        text.append(f"{view.instance.name}", style="bold")
        text.append(" presents ")
        if view.presents:
            ok = view.presents == spiffe_id("reviews")
            text.append(view.presents, style="bold green" if ok else "bold red")
        else:
            text.append(view.presents_problem or "nothing", style="red")
        if view.plain_refused is not None:
            text.append("; plain HTTP " + ("refused (STRICT)" if view.plain_refused
                                           else "ACCEPTED"),
                        style="" if view.plain_refused else "red")
        text.append("\n  its sidecar verified ")
        if view.peers:
            text.append(", ".join(f"{peer} on {n} requests"
                                  for peer, n in view.peers.most_common()), style="green")
        else:
            text.append("no client identity", style="red")
        text.append("\n")
    text.append("productpage's sidecar requires the upstream to be "
                f"{spiffe_id('reviews')} (mtls expect); all certificates from the control "
                "plane CA", style="dim")
    return Panel(text, title="Peer identities (mTLS, SPIFFE)", title_align="left")


def _hop(text: Text, who: str, line: dict[str, Any] | None, how: str, then: str) -> None:
    text.append(f"  {who} logged ")
    if line is None:
        text.append("no such call\n", style="bold red")
        return
    protocol, status = line.get("protocol"), line.get("grpc_status")
    text.append(str(protocol), style="bold green" if protocol == "HTTP/2" else "bold red")
    text.append(f" ({how}), grpc_status ")
    text.append(str(status), style="bold green" if status == 0 else "bold red")
    text.append(f", HTTP {line.get('status')}\n    {then}\n")


def _grpc(call: GrpcCall) -> Panel:
    client, server = call.client_side or {}, call.server_side or {}
    name = call.instance.name
    text = Text()
    text.append(GET_METHOD, style="bold")
    text.append(" (unary), called once by productpage")
    duration = client.get("duration_ms")
    text.append(f": {duration:.1f} ms through both sidecars\n"
                if isinstance(duration, int | float) else "\n")
    _hop(text, "productpage's sidecar", call.client_side, "h2c from productpage",
         f"route {client.get('route')} → {name}'s sidecar {client.get('upstream')} over mTLS "
         "(ALPN h2, cluster protocol: http2)")
    _hop(text, f"{name}'s sidecar", call.server_side, "over mTLS",
         f"client verified: {server.get('peer')}; → its app {server.get('upstream')} (h2c)")
    text.append(f"productpage's sidecar requires ratings to present {spiffe_id('ratings')} "
                "(mtls expect)", style="dim")
    return Panel(text, title="One gRPC call: productpage → ratings, HTTP/2 on every hop "
                 "(both sidecars' access logs)", title_align="left")


def _label(span: dict[str, Any], start: float) -> Text:
    tags = span.get("tags") or {}
    service = (span.get("localEndpoint") or {}).get("serviceName", "?")
    status = tags.get("http.response.status_code") or tags.get("http.status_code") or ""
    text = Text()
    text.append(f"{service} ", style="bold cyan")
    text.append(f"{span.get('kind', '')} ".lower(), style="magenta")
    text.append(str(span.get("name", "")))
    offset = (int(span.get("timestamp") or 0) - start) / 1000
    text.append(f"  +{offset:.1f}ms {int(span.get('duration') or 0) / 1000:.1f}ms",
                style="dim")
    if status:
        text.append(f"  {status}", style="green" if str(status).startswith("2") else "red")
    grpc_status = tags.get("grpc.status_code")
    if grpc_status is not None:
        text.append(f"  grpc-status {grpc_status}",
                    style="green" if str(grpc_status) == "0" else "red")
    if tags.get("network.protocol.version") == "2":
        text.append("  HTTP/2", style="dim")
    upstream = tags.get("upstream_address")
    if upstream:
        text.append(f"  → {upstream}", style="dim")
    flags = tags.get("response_flags")
    if flags and flags != "-":
        text.append(f"  [{flags}]", style="yellow")
    return text


def render_trace(spans: list[dict[str, Any]]) -> Tree:
    """One trace as a tree of spans by parent id, children in start order."""
    ordered = sorted(spans, key=lambda s: int(s.get("timestamp") or 0))
    start = int(ordered[0].get("timestamp") or 0) if ordered else 0
    ids = {s.get("id") for s in ordered}
    trace_id = ordered[0].get("traceId", "?") if ordered else "?"
    root = Tree(Text(f"trace {trace_id} ({len(spans)} spans)", style="bold"))
    nodes: dict[Any, Tree] = {}
    pending = list(ordered)
    # Parents first: a span's parent may have started (and be listed) after it.
    while pending:
        progressed = False
        for span in list(pending):
            parent = span.get("parentId")
            if parent in nodes or parent not in ids:
                holder = nodes.get(parent, root)
                nodes[span.get("id")] = holder.add(_label(span, start))
                pending.remove(span)
                progressed = True
        if not progressed:
            for span in pending:
                nodes[span.get("id")] = root.add(_label(span, start))
            break
    return root


def render(ev: Evidence) -> RenderableType:
    acked = [p for p in ev.proxies if str(p.get("state", "")).upper() == "ACK"]
    header = Text()
    header.append("sidemesh demo: ", style="bold")
    header.append(f"1 control plane, 5 sidecars (productpage, 3 reviews pods, ratings), config "
                  f"v{ev.version} pushed; ")
    header.append(f"{len(acked)} proxies ACKed their config in /v1/proxies; "
                  f"{ev.spans_total} spans received")
    parts: list[RenderableType] = [Panel(header), _split(ev), _endpoints(ev), _resilience(ev),
                                   _identities(ev), _grpc(ev.grpc)]
    if ev.trace:
        parts.append(Panel(render_trace(ev.trace), title="One request, as the sidecars "
                           "traced it (Zipkin spans)", title_align="left"))
    return Group(*parts)
