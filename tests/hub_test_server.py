"""A stand-in for the Hugging Face Hub on 127.0.0.1, for `datagen push` tests.

It answers the endpoints `huggingface_hub` calls to create a dataset repo and commit a
folder (`/api/repos/create`, `…/preupload/REV`, `…/commit/REV`, repo info), checks the bearer
token, stores committed files, and can drop the first N connections of a route without an
answer, so the real client is tested over real sockets, not mocked.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections import Counter
from typing import Any

from aiohttp import web


class HubTestServer:
    def __init__(self, token: str = "hf_test_token") -> None:
        self.token = token
        self.port = 0
        self.repos: dict[str, dict[str, Any]] = {}     # repo_id -> {"private": bool, "files": {path: bytes}}
        self.commits: list[dict[str, Any]] = []
        self.calls: Counter[str] = Counter()
        self.drop_first: Counter[str] = Counter()        # route name -> connections still to drop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HubTestServer:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("hub test server did not start")
        return self

    def stop(self) -> None:
        if self._loop and self._stopped:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread:
            self._thread.join(10)

    async def _main(self) -> None:
        self._loop, self._stopped = asyncio.get_running_loop(), asyncio.Event()
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/api/repos/create", self._create)
        app.router.add_post("/api/validate-yaml", self._validate_yaml)
        app.router.add_get("/api/datasets/{ns}/{name}", self._info)
        app.router.add_post("/api/datasets/{ns}/{name}/preupload/{rev}", self._preupload)
        app.router.add_post("/api/datasets/{ns}/{name}/commit/{rev}", self._commit)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(runner.addresses[0][1])
        self._ready.set()
        await self._stopped.wait()
        await runner.cleanup()

    def _gate(self, request: web.Request, route: str) -> web.Response | None:
        """Count the call; drop the connection or refuse the token when told to."""
        self.calls[route] += 1
        if self.drop_first[route] > 0:
            self.drop_first[route] -= 1
            if request.transport is not None:
                request.transport.close()
            raise ConnectionResetError("dropped on purpose")
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "Invalid credentials in Authorization header"}, status=401,
                                     headers={"X-Error-Message": "Invalid credentials in Authorization header"})
        return None

    async def _create(self, request: web.Request) -> web.Response:
        refused = self._gate(request, "create")
        if refused:
            return refused
        body = await request.json()
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        if repo_id in self.repos:
            return web.json_response({"error": "You already created this dataset repo"}, status=409)
        self.repos[repo_id] = {"private": bool(body.get("private")) or body.get("visibility") == "private", "type": body.get("type"), "files": {}}
        return web.json_response({"url": f"{self.endpoint}/datasets/{repo_id}", "name": repo_id})

    async def _validate_yaml(self, request: web.Request) -> web.Response:
        """The README's metadata block must be YAML mapping with the keys a dataset card needs."""
        import yaml

        self.calls["validate-yaml"] += 1
        content = (await request.json())["content"]
        errors = []
        if not content.startswith("---\n") or "\n---\n" not in content:
            errors.append({"message": "no metadata block"})
        else:
            meta = yaml.safe_load(content[4:content.index("\n---\n")])
            for key in ("license", "configs", "tags"):
                if not isinstance(meta, dict) or key not in meta:
                    errors.append({"message": f"missing {key}"})
        return web.json_response({"errors": errors, "warnings": []}, status=400 if errors else 200)

    async def _info(self, request: web.Request) -> web.Response:
        refused = self._gate(request, "info")
        if refused:
            return refused
        repo_id = f"{request.match_info['ns']}/{request.match_info['name']}"
        if repo_id not in self.repos:
            return web.json_response({"error": "Repository not found"}, status=404)
        return web.json_response({"id": repo_id, "sha": "0" * 40, "private": self.repos[repo_id]["private"]})

    async def _preupload(self, request: web.Request) -> web.Response:
        refused = self._gate(request, "preupload")
        if refused:
            return refused
        body = await request.json()
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                 for f in body.get("files", [])]
        return web.json_response({"files": files, "commitOid": "0" * 40})

    async def _commit(self, request: web.Request) -> web.Response:
        refused = self._gate(request, "commit")
        if refused:
            return refused
        repo_id = f"{request.match_info['ns']}/{request.match_info['name']}"
        if repo_id not in self.repos:
            return web.json_response({"error": "Repository not found"}, status=404)
        lines = [json.loads(line) for line in (await request.text()).splitlines() if line.strip()]
        header = next(x["value"] for x in lines if x["key"] == "header")
        files = {x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"}
        self.repos[repo_id]["files"].update(files)
        self.commits.append({"repo": repo_id, "summary": header.get("summary"), "files": sorted(files)})
        oid = f"{len(self.commits):040x}"
        return web.json_response({"commitUrl": f"{self.endpoint}/datasets/{repo_id}/commit/{oid}",
                                  "commitOid": oid, "pullRequestUrl": None})
