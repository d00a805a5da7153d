"""`datagen view`: a local web app over a run's SQLite index (Starlette + Jinja2).

Read-only except one thing: review decisions, appended to `review.jsonl` (datagen.review) and
applied by the next `datagen run`. Every generated text reaches the page through Jinja2 with
autoescape on, and a Content-Security-Policy forbids scripts outright (the pages need none),
so a record holding `<script>` or `<img onerror=…>` is shown as text and could not run even if
an escape were ever missed. Forms carry a per-process token, so another site open in the same
browser cannot post decisions to 127.0.0.1. Bound to another host, every request also needs
the access token the command prints.
"""

from __future__ import annotations

import hmac
import json
import secrets
import sqlite3
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from datagen import review, view_queries
from datagen.svg import svg_bars, svg_histogram
from datagen.view_index import open_index

CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")


def template_env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("datagen", "templates/viewer"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["clip"] = clip
    env.filters["pretty"] = lambda value: json.dumps(value, ensure_ascii=False, indent=2, default=str)
    return env


def clip(value: Any, limit: int) -> str:
    """Cut text to `limit` characters before autoescape sees it, so no entity is cut in half."""
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[:limit] + "…"


class Viewer:
    """The app's state: the run, its index connection, the secrets."""

    def __init__(self, target: Path, access_token: str | None = None):
        self.target = target
        self.run_dir = target if target.is_dir() else None
        self.conn: sqlite3.Connection = open_index(target)
        self.access_token = access_token
        self.form_token = secrets.token_urlsafe(24)
        self.env = template_env()
        self.manifest = self._json("manifest.json")
        config = self._yaml("config.yaml")
        self.prices = config.get("prices") or {}
        self.facets = view_queries.facets(self.conn)  # the index never changes while served

    def _json(self, name: str) -> dict[str, Any]:
        path = (self.run_dir / name) if self.run_dir else None
        return json.loads(path.read_text(encoding="utf-8")) if path and path.exists() else {}

    def _yaml(self, name: str) -> dict[str, Any]:
        import yaml

        path = (self.run_dir / name) if self.run_dir else None
        return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path and path.exists() else {}

    def render(self, name: str, **context: Any) -> HTMLResponse:
        title = self.manifest.get("name") or self.target.name
        body = self.env.get_template(name).render(run_name=title, form_token=self.form_token, **context)
        return HTMLResponse(body)

    # ---- pages -----------------------------------------------------------------------
    async def home(self, request: Request) -> Response:
        stages = self.manifest.get("stages", [])
        labels = ["input"] + [s["label"] for s in stages]
        counts = [self.manifest.get("input", {}).get("records", 0)] + [s["out"] for s in stages]
        reasons = [(s["label"], reason, count) for s in stages for reason, count in (s.get("drop_reasons") or {}).items()]
        last = stages[-1]["label"] if stages else (self.target.stem if self.run_dir is None else "input")
        lengths = [r[0] for r in self.conn.execute(
            "SELECT length FROM records WHERE stage = ? AND status = 'kept' LIMIT 20000", (last,))]
        scores = [r[0] for r in self.conn.execute(
            "SELECT score FROM records WHERE stage = ? AND score IS NOT NULL LIMIT 20000", (last,))]
        charts = [svg_bars(labels, counts, "Funnel: records after each stage") if stages else "",
                  svg_bars([f"{s}:{r}" for s, r, _ in reasons], [c for *_, c in reasons], "Dropped, by stage and reason")
                  if reasons else "",
                  svg_histogram(lengths, f"Length of {last} records", x_label="characters (instruction + input + output)"),
                  svg_histogram(scores, f"Main score of {last} records", x_label="judge score") if scores else ""]
        total = self.conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        return self.render("home.html", manifest=self.manifest, stages=stages, reasons=reasons, total=total,
                           charts=[Markup(c) for c in charts if c],  # noqa: S704 - built by datagen.svg, escaped there
                           decisions=len(review.read_decisions(self.run_dir)) if self.run_dir else 0)

    async def records(self, request: Request) -> Response:
        filters = view_queries.Filters.from_query(dict(request.query_params))
        try:
            page = view_queries.record_page(self.conn, filters)
        except sqlite3.OperationalError as exc:
            filters.errors.append(f"search: {exc}")
            page = {"total": 0, "rows": [], "pages": 1}
        return self.render("records.html", filters=filters, page=page, facets=self.facets)

    async def record(self, request: Request) -> Response:
        rec = view_queries.record(self.conn, int(request.path_params["rowid"]))
        if rec is None:
            return PlainTextResponse("no such record", status_code=404)
        meta = rec["meta"]
        decisions = ([d for d in review.read_decisions(self.run_dir) if d["id"] == rec["id"]]
                     if self.run_dir else [])
        return self.render(
            "record.html", rec=rec, meta=meta, lineage=view_queries.lineage(self.conn, rec),
            diff=view_queries.parent_diff(self.conn, rec), children=view_queries.children(self.conn, rec["id"]),
            candidates=meta.get("candidates") or [], best=meta.get("best_candidate"),
            calls=view_queries.llm_calls(self.run_dir, rec, self.prices) if self.run_dir else [],
            decisions=decisions, can_review=self.run_dir is not None)

    async def decide(self, request: Request) -> Response:
        form = await request.form()
        if not hmac.compare_digest(str(form.get("form_token", "")), self.form_token):
            return PlainTextResponse("form expired: reload the page", status_code=403)
        if self.run_dir is None:
            return PlainTextResponse("review needs a run directory", status_code=400)
        rec = view_queries.record(self.conn, int(request.path_params["rowid"]))
        if rec is None:
            return PlainTextResponse("no such record", status_code=404)
        decision = str(form.get("decision", ""))
        if decision not in review.DECISIONS:
            return PlainTextResponse(f"unknown decision {decision!r}", status_code=400)
        fields = {k: str(form.get(k, "")) for k in review.EDITABLE if k in form}
        review.append_decision(self.run_dir, rec["id"], decision, stage=rec["stage"],
                               who=str(form.get("who", "")).strip()[:80], fields=fields)
        return RedirectResponse(f"/record/{rec['rowid']}#review", status_code=303)


def build_app(target: str | Path, access_token: str | None = None) -> Starlette:
    viewer = Viewer(Path(target), access_token)

    app = Starlette(routes=[
        Route("/", viewer.home),
        Route("/records", viewer.records),
        Route("/record/{rowid:int}", viewer.record),
        Route("/record/{rowid:int}/review", viewer.decide, methods=["POST"]),
    ])
    app.state.viewer = viewer
    app.add_middleware(_SecurityMiddleware, access_token=access_token)
    return app


class _SecurityMiddleware:
    """CSP and no-sniff on every answer; with an access token, refuse requests without it
    (given once as `?token=`, then kept in an HttpOnly cookie)."""

    def __init__(self, app: Any, access_token: str | None):
        self.app, self.token = app, access_token

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        set_cookie = False
        if self.token:
            given = request.query_params.get("token") or request.cookies.get("datagen_view_token", "")
            if not hmac.compare_digest(given, self.token):
                await PlainTextResponse("access token required: open the URL `datagen view` printed",
                                        status_code=401)(scope, receive, send)
                return
            set_cookie = "token" in request.query_params

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"no-referrer")]
                if set_cookie:
                    headers.append((b"set-cookie", f"datagen_view_token={self.token}; HttpOnly; SameSite=Strict; "
                                    "Path=/".encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
