"""The ASGI app behind `seal ui`: five read-only pages over one registry, and what guards them.

Routes (all GET; every other method gets 405):

- ``/``: the lineage, filtered and paged by keyset (``?branch= &kind= &status= &since= &until=
  &trigger= &after=``);
- ``/v/{rev}``: one version (any revision `seal show` takes);
- ``/compare?old=A&new=B``: B relative to A, as `seal diff A B`;
- ``/drift?branch=B``: a branch's drift over its edits;
- ``/audit?rev=R&since=S``: the compliance report, and ``/audit/download?…&format=md|json|html``;
- ``/static/…``: the stylesheet, from the package (never from the registry).

What guards them: every response carries a strict Content-Security-Policy (no script at all,
styles from this server only); with a token, every request must present it (header, cookie or
``?token=`` once), compared in constant time; without one, only loopback Host headers are served,
so a web page elsewhere cannot reach the registry through DNS rebinding. The registry is opened
read-only, so no route can write even by mistake. A revision that does not resolve gets a 404
page with one line, as the CLI gives exit 2.

>>> app = create_app(Registry.open(".", read_only=True))          # doctest: +SKIP
"""

from __future__ import annotations

import hmac
import ipaddress
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from seal.registry.errors import RevisionError, SealError, UserError
from seal.registry.store import refs as R

from . import lanes, plots, views

HERE = Path(__file__).parent
PAGE_SIZE = 50
AUDIT_PAGE_VERSIONS = 200  # the audit page shows the newest; its downloads carry every version
COOKIE = "seal_ui_token"
CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cache-control": "no-store",
}
AUDIT_TYPES = {"md": "text/markdown; charset=utf-8", "json": "application/json", "html": "text/html; charset=utf-8"}


class NotFound(Exception):
    """A page the reader asked for does not exist: one line, status 404."""


class BadRequest(Exception):
    """A query the reader gave cannot be answered: one line, status 400."""


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(HERE / "templates")), autoescape=True, trim_blocks=True,
                      lstrip_blocks=True)
    env.filters.update(short=views.short, rev=_short_rev, when=lambda ts: str(ts or "").replace("T", " ")[:19],
                       num=_num, signed=_signed)
    env.globals.update(line_plot=plots.line_plot, bar_plot=plots.bar_plot, ROW_H=lanes.ROW_H, x_of=lanes.x_of,
                       lane_paths=lanes.paths, module_bars=_module_bars)
    return env


def _module_bars(modules: list[dict], limit: int = 24) -> list[tuple[str, float]]:
    """The largest per-module ‖Δ‖ of a diff, for its bar plot (the table below lists them all)."""
    rows = sorted(((m["module"], m["diff_norm"]) for m in modules if m.get("diff_norm") is not None),
                  key=lambda row: -row[1])
    return rows[:limit]


def _short_rev(rev: str) -> str:
    """A revision as a reader types it: a full version id cut to 12 digits, anything else as given."""
    return rev[:12] if len(rev) == 64 and all(c in "0123456789abcdef" for c in rev) else rev


def _num(x, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    return f"{x:.{digits}f}"


def _signed(x, digits: int = 4) -> str:
    return "–" if not isinstance(x, (int, float)) else f"{x:+.{digits}f}"


class SealUI:
    """The pages, over one registry; one request reads it at a time (one connection, one lock)."""

    def __init__(self, reg, *, mlflow_url: str | None = None):
        self.reg = reg
        self.mlflow_url = mlflow_url
        self.lock = threading.Lock()
        self.env = environment()

    def warm(self) -> None:
        """Compile every template and import what the pages use, before the first reader waits for it
        (at start, where `seal ui` has time to spare, not in the first page's 200 ms)."""
        import seal.registry.audit  # noqa: F401
        import seal.registry.diff  # noqa: F401
        import seal.registry.lora_math  # noqa: F401
        import seal.registry.scan  # noqa: F401
        import seal.registry.store.signing  # noqa: F401
        import seal.editor.writer  # noqa: F401  (torch-free)

        for name in self.env.list_templates():
            self.env.get_template(name)
        views.masked("warm")

    def render(self, name: str, status: int = 200, **context) -> HTMLResponse:
        html = self.env.get_template(name).render(**context, registry=self._title())
        return HTMLResponse(html, status_code=status)

    def _title(self) -> str:
        reg = self.reg
        return str(reg.root.name) if reg.seal_dir is not None else "registry"

    # --- pages ----------------------------------------------------------------------------------

    def lineage(self, request: Request) -> Response:
        from seal.registry.listing import Cursor, VersionFilter, version_page

        q = request.query_params
        flt = VersionFilter(**{k: (q.get(k) or "").strip() or None for k in ("branch", "kind", "status", "since", "until", "trigger")})
        after = Cursor.parse(q.get("after"))
        if q.get("after") and after is None:
            raise BadRequest("that page cursor is not valid; go back to the first page")
        with self.lock:
            try:
                page = version_page(self.reg, flt, after=after, limit=PAGE_SIZE)
            except RevisionError as e:
                raise NotFound(str(e)) from None
            except UserError as e:
                raise BadRequest(str(e)) from None
            refs = views.ref_map(self.reg)
            branches = [R.short_name(name) for name, _ in self.reg.refs("refs/heads/")]
        rows = [r.__dict__ for r in page.rows]
        layout = lanes.lay_out(rows)
        width = max((lay.svg_width() for lay in layout), default=lanes.PAD * 2)
        filters = {k: v for k, v in flt.__dict__.items() if v}
        next_url = "/?" + urlencode({**filters, "after": page.next.text()}) if page.next else None
        return self.render("lineage.html.j2", rows=list(zip(rows, layout)), refs=refs, width=width, filters=filters,
                           branches=branches, next_url=next_url, first_url="/?" + urlencode(filters) if after else None,
                           kinds=views.KIND_MARKS, page_size=PAGE_SIZE)

    def version(self, request: Request) -> Response:
        rev = request.path_params["rev"]
        with self.lock:
            try:
                view = views.version_view(self.reg, rev, mlflow_url=self.mlflow_url)
            except RevisionError as e:
                raise NotFound(str(e)) from None
        return self.render("version.html.j2", v=view, r=view["record"])

    def compare(self, request: Request) -> Response:
        from seal.registry.diff import diff_versions

        old, new = (request.query_params.get(k, "").strip() for k in ("old", "new"))
        report = None
        if old and new:
            with self.lock:
                try:
                    report = views.masked_diff(diff_versions(self.reg, old, new))
                except RevisionError as e:
                    raise NotFound(str(e)) from None
        return self.render("compare.html.j2", old=old, new=new, d=report)

    def drift(self, request: Request) -> Response:
        branch = request.query_params.get("branch", "").strip() or "HEAD"
        with self.lock:
            try:
                view = views.drift_view(self.reg, branch)
            except RevisionError as e:
                raise NotFound(str(e)) from None
            branches = [R.short_name(name) for name, _ in self.reg.refs("refs/heads/")]
        return self.render("drift.html.j2", d=view, branches=branches)

    def _audit(self, request: Request) -> tuple[dict, str, str | None]:
        rev = request.query_params.get("rev", "").strip() or "HEAD"
        since = request.query_params.get("since", "").strip() or None
        # An audit takes seconds: on a connection of its own, so the other pages do not wait for it.
        reg = self.reg.reopened()
        try:
            return views.audit_range(reg, rev, since), rev, since
        except RevisionError as e:
            raise NotFound(str(e)) from None
        except views.AuditTooLarge as e:
            raise BadRequest(str(e)) from None
        finally:
            reg.close()

    def audit(self, request: Request) -> Response:
        report, rev, since = self._audit(request)
        query = urlencode({"rev": rev, **({"since": since} if since else {})})
        return self.render("audit.html.j2", a=report, rev=rev, since=since, query=query,
                           gates=views.gate_rows, max_versions=AUDIT_PAGE_VERSIONS)

    def audit_download(self, request: Request) -> Response:
        from seal.registry.audit import render

        fmt = request.query_params.get("format", "md")
        if fmt not in AUDIT_TYPES:
            raise BadRequest(f"unknown format {fmt!r}; use md, json or html")
        report, _, _ = self._audit(request)
        name = f"audit-{report['subject'][:12]}.{fmt}"
        return Response(render(report, fmt), media_type=AUDIT_TYPES[fmt],
                        headers={"content-disposition": f'attachment; filename="{name}"'})


def create_app(reg, *, token: str | None = None, mlflow_url: str | None = None, local_only: bool = True,
               warm: bool = True) -> Starlette:
    """The app over ``reg`` (open it with ``read_only=True``). With ``token``, every request must
    present it; with ``local_only`` (and no token), only loopback Host headers are answered; with
    ``warm``, templates are compiled and page modules imported now rather than on the first request."""
    ui = SealUI(reg, mlflow_url=mlflow_url)
    if warm:
        ui.warm()
    routes = [
        Route("/", ui.lineage, methods=["GET"]),
        Route("/v/{rev:path}", ui.version, methods=["GET"]),
        Route("/compare", ui.compare, methods=["GET"]),
        Route("/drift", ui.drift, methods=["GET"]),
        Route("/audit", ui.audit, methods=["GET"]),
        Route("/audit/download", ui.audit_download, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
    ]

    def error_page(status: int, line: str) -> Response:
        return ui.render("error.html.j2", status=status, line=line, code=status)

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_page(404, str(exc))

    async def bad_request(request: Request, exc: Exception) -> Response:
        return error_page(400, str(exc))

    async def http_error(request: Request, exc: HTTPException) -> Response:
        line = {404: "there is no such page here; start from the lineage", 405: "this app only reads: use GET"}
        return error_page(exc.status_code, line.get(exc.status_code, exc.detail or "refused"))

    async def seal_error(request: Request, exc: SealError) -> Response:
        return error_page(503 if isinstance(exc, UserError) else 500, str(exc))

    app = Starlette(routes=routes, exception_handlers={
        NotFound: not_found, BadRequest: bad_request, HTTPException: http_error, SealError: seal_error,
    })
    app.state.ui = ui
    app.add_middleware(Guard, token=token, local_only=local_only and token is None)
    app.add_middleware(SecurityHeaders)
    return app


class SecurityHeaders:
    """Adds the Content-Security-Policy and friends to every response, errors included, and a
    ``Server-Timing`` header: the app's time from the request to the response's start (pages are
    rendered whole before they start), which bench/ui.py reads."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.decode().lower() not in SECURITY_HEADERS]
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                headers.append((b"server-timing", f"app;dur={(time.perf_counter() - started) * 1000:.1f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Guard:
    """The token on every request (constant-time compare), or loopback Host headers only."""

    def __init__(self, app, *, token: str | None, local_only: bool):
        self.app = app
        self.token = token.encode() if token else None
        self.local_only = local_only

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        if self.local_only and not is_loopback(_host_name(request.headers.get("host", ""))):
            return await PlainTextResponse("seal ui answers only on 127.0.0.1 without a token; open "
                                           "http://127.0.0.1:PORT/", status_code=421)(scope, receive, send)
        if self.token is None:
            return await self.app(scope, receive, send)
        header = request.headers.get("authorization", "")
        given = {"header": header[7:] if header.lower().startswith("bearer ") else None,
                 "cookie": request.cookies.get(COOKIE), "query": request.query_params.get("token")}
        # Every candidate is compared, so the time taken does not say which one was close.
        matched = [where for where, value in given.items()
                   if hmac.compare_digest((value or "").encode(), self.token) and value is not None]
        if not matched:
            return await PlainTextResponse("this seal ui needs its token: open the address `seal ui` printed, "
                                           "or send Authorization: Bearer TOKEN", status_code=401)(scope, receive, send)
        if matched == ["query"]:
            # Trade the token in the address for a cookie, so it leaves the address bar and history.
            rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            response = RedirectResponse(request.url.path + ("?" + rest if rest else ""), status_code=303)
            response.set_cookie(COOKIE, self.token.decode(), httponly=True, samesite="strict", path="/")
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a Host header's name) only reaches this machine.

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("[::1]"), is_loopback("127.0.0.2")
    (True, True, True, True)
    >>> is_loopback("0.0.0.0"), is_loopback("seal.example"), is_loopback("localhost.evil.example")
    (False, False, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(host: str) -> str:
    """The name in a Host header, without its port: ``[::1]:8765`` -> ``[::1]``."""
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


__all__ = ["create_app", "SealUI", "CSP"]
