"""A loopback Hugging Face Hub speaking the upload API, for tests (the real Hub cannot be reached here).

It follows what huggingface_hub 2.4.0 sends and reads (hf_api.py `create_repo`,
`create_commit`, `preupload_lfs_files`, `_validate_yaml`, `model_info`;
_commit_api.py; lfs.py; utils/_http.py `hf_raise_for_status`) and the git-lfs
Batch API (git-lfs docs/api/batch.md, "basic" transfer):

- `POST /api/repos/create` {name, organization, visibility?, type?} -> {"url", "name", "id"};
  an existing repo -> 409, which `create_repo(exist_ok=True)` swallows.
- `GET /api/{type}s/{repo}[/revision/{rev}]` -> {"id", "sha", "private", "siblings"}, or 404 RepoNotFound.
- `POST /api/validate-yaml` (sent when a README.md is uploaded) -> {"errors": [], "warnings": []}.
- `POST /api/{type}s/{repo}/preupload/{rev}` {files: [{path, sample, size}]} ->
  {"files": [{path, uploadMode: "lfs"|"regular", shouldIgnore, oid}]}: "lfs" for the
  Hub's default .gitattributes suffixes, files of 10 MiB or more and binary samples.
  `oid` is the stored file's (sha256 for LFS, git blob sha1 otherwise): unchanged files are skipped.
- `POST /{prefix}{repo}.git/info/lfs/objects/batch` -> {"transfer": "basic", "objects": [{oid, size,
  actions: {upload: {href}, verify: {href}}}]} (no actions when the object is already stored);
  `PUT /lfs-objects/{oid}` (unauthenticated, like the Hub's presigned S3 URL) stores it after a
  sha256/size check; `POST /{prefix}{repo}.git/info/lfs/objects/verify` {oid, size}.
- `POST /api/{type}s/{repo}/commit/{rev}` NDJSON: {"key": "header", "value": {summary, description}},
  then "file" (base64 content), "lfsFile" (oid of an uploaded object), "deletedFile"/"deletedFolder"
  -> {"success", "commitOid", "commitUrl", "hookOutput"} (+ "pullRequestUrl" with ?create_pr=1).

Xet: huggingface_hub 2.4 picks Xet on the client alone (`utils._runtime.is_xet_available()`:
hf_xet importable and `constants.HF_HUB_DISABLE_XET` false); no server answer turns it off, and
with it `upload_folder` takes `_upload_pipeline.pipelined_upload`, sending every "lfs" file to
a Xet CAS. So clients of this server need `HF_HUB_DISABLE_XET=1` in the environment before
huggingface_hub is imported (a subprocess), or `huggingface_hub.constants.HF_HUB_DISABLE_XET = True`
in process (`configure(monkeypatch)` does both). Then uploads go through preupload, the LFS batch
API and the commit. If Xet is used anyway, `GET .../xet-write-token/{rev}` answers 501, and the
upload fails at once with hf_xet's `ConnectionError` "... (501 Not Implemented) ... xet-write-token".
`lfs=False` answers "regular" for every file, so no LFS and no Xet is involved at all.

Errors are {"error": "..."} with the same text in `X-Error-Message`. A missing or wrong
`Authorization: Bearer <token>` gets 401 "Invalid credentials in Authorization header", which
the client raises as `HfHubHTTPError`. `faults` is a queue of misbehaviours ("500", "502",
"503", any status; "drop": close without an answer; None: answer normally) consumed one per
request to `fault_endpoint` ("create", "repo_info", "preupload", "lfs_batch", "lfs_upload",
"lfs_verify", "commit", "validate_yaml").
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
# Suffixes the Hub's default .gitattributes sends to LFS (the usual ones of a model repo).
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".gguf", ".msgpack", ".npy",
                ".npz", ".pkl", ".pickle", ".tflite", ".ot", ".model", ".zip", ".tar", ".gz", ".arrow", ".parquet")
API = re.compile(r"^/api/(models|datasets|spaces)/([^/]+(?:/[^/]+)?)"
                 r"(?:/(preupload|commit|revision|xet-write-token)/(.+))?$")
LFS_API = re.compile(r"^/(?:(datasets|spaces)/)?(.+)\.git/info/lfs/objects/(batch|verify)$")
INVALID_TOKEN = "Invalid credentials in Authorization header"


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # A client that gave up on a dropped connection is part of the tests, not an error to print.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class HubServer:
    def __init__(self, token: str | None = "hf_loopback_token", *, user: str = "loopback-user", lfs: bool = True,
                 fault_endpoint: str = "commit"):
        self.token = token  # the one valid token; None accepts any Authorization (or none)
        self.user = user  # the namespace of repos created without an organization
        self.lfs = lfs
        self.fault_endpoint = fault_endpoint
        self.faults: list[str | None] = []
        self.repos: dict[str, dict[str, Any]] = {}  # repo_id -> {id, type, private, visibility, files, lfs_paths}
        self.commits: list[dict[str, Any]] = []  # {repo_id, repo_type, revision, message, description, files, ...}
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> content, as uploaded through the LFS batch API
        self.requests: list[dict[str, Any]] = []  # {method, path (with query), endpoint, authorization, status}
        self.auth_headers: list[str | None] = []  # every Authorization header value, None where absent
        self.connections = 0  # connections accepted so far
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # kept alive between requests, as the Hub's servers do

            def setup(self) -> None:
                super().setup()
                with server._lock:
                    server.connections += 1
                    server._open.add(self.connection)

            def finish(self) -> None:
                with server._lock:
                    server._open.discard(self.connection)
                try:
                    super().finish()
                except OSError:
                    pass

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self)

            do_POST = do_PUT = do_GET

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close every kept-alive connection."""
        self.httpd.shutdown()
        self.httpd.server_close()
        with self._lock:
            connections, self._open = list(self._open), set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            connection.close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def env(self) -> dict[str, str]:
        """Environment for a huggingface_hub client in a subprocess (read when huggingface_hub is imported)."""
        return {"HF_ENDPOINT": self.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0",
                "HF_HUB_DISABLE_TELEMETRY": "1", **({"HF_TOKEN": self.token} if self.token else {})}

    def configure(self, monkeypatch: Any) -> None:
        """Point this process's huggingface_hub here: the env, and the constants it read at import."""
        from huggingface_hub import constants, hf_api
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        # Only for callers that name no endpoint: HfApi() and the module-level functions (hf_api.api).
        monkeypatch.setattr(constants, "ENDPOINT", self.url)
        monkeypatch.setattr(hf_api.api, "endpoint", self.url)

    # --- plumbing ----------------------------------------------------------------

    @staticmethod
    def _body(handler: BaseHTTPRequestHandler) -> bytes:
        if "chunked" in (handler.headers.get("Transfer-Encoding") or "").lower():
            data = b""
            while size := int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16):
                data += handler.rfile.read(size)
                handler.rfile.readline()
            while handler.rfile.readline().strip():  # trailers
                pass
            return data
        return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))

    def _send(self, handler: BaseHTTPRequestHandler, status: int, body: Any, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json; charset=utf-8")
        handler.send_header("Content-Length", str(len(data)))
        if handler.headers.get("X-Amzn-Trace-Id"):
            handler.send_header("X-Request-Id", handler.headers["X-Amzn-Trace-Id"])
        if status >= 400 and isinstance(body, dict) and isinstance(body.get("error"), str):
            handler.send_header("X-Error-Message", body["error"])
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)
        getattr(handler, "log_entry", {})["status"] = status

    def _route(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        if method == "POST" and path == "/api/repos/create":
            return "create", {}
        if method == "POST" and path == "/api/validate-yaml":
            return "validate_yaml", {}
        if method == "PUT" and path.startswith("/lfs-objects/"):
            return "lfs_upload", {"oid": path.rsplit("/", 1)[1]}
        if m := API.match(path):
            kind, rev = m.group(3), unquote(m.group(4) or "main")
            args = {"repo_type": TYPES[m.group(1)], "repo_id": m.group(2), "revision": rev}
            name = {None: "repo_info", "revision": "repo_info", "preupload": "preupload", "commit": "commit",
                    "xet-write-token": "xet_token"}[kind]
            if (method == "GET") == (name in ("repo_info", "xet_token")):
                return name, args
        if method == "POST" and (m := LFS_API.match(path)):
            return f"lfs_{m.group(3)}", {"repo_type": TYPES.get(m.group(1) or "models"), "repo_id": m.group(2)}
        return "unknown", {}

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        endpoint, args = self._route(handler.command, url.path)
        body = self._body(handler)  # read it all before answering, even an error
        auth = handler.headers.get("Authorization")
        handler.log_entry = {"method": handler.command, "path": handler.path, "endpoint": endpoint,
                             "authorization": auth, "status": None}
        with self._lock:
            self.requests.append(handler.log_entry)
            self.auth_headers.append(auth)
        if endpoint == "unknown":
            return self._send(handler, 404, {"error": f"Sorry, we can't find the page you are looking for: {url.path}"})
        if endpoint != "lfs_upload" and self.token is not None and auth != f"Bearer {self.token}":
            return self._send(handler, 401, {"error": INVALID_TOKEN})
        with self._lock:
            fault = self.faults.pop(0) if self.faults and endpoint == self.fault_endpoint else None
        if fault == "drop":
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault:
            return self._send(handler, int(fault), {"error": f"Internal Error - injected {fault} on {endpoint}"})
        if "repo_id" in args:
            repo = self.repos.get(args["repo_id"])
            if repo is None or repo["type"] != args["repo_type"]:
                return self._send(handler, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            args["repo"] = repo
        try:
            payload = json.loads(body) if body and endpoint not in ("commit", "lfs_upload") else None
        except json.JSONDecodeError:
            return self._send(handler, 400, {"error": "Invalid JSON in request body"})
        try:
            getattr(self, f"_{endpoint}")(handler, payload, body, query=parse_qs(url.query), **args)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:  # a request this Hub would reject
            self._send(handler, 400, {"error": f"Bad request: {exc!r}"})

    # --- endpoints ---------------------------------------------------------------

    def _create(self, handler: BaseHTTPRequestHandler, payload: dict, body: bytes, **_: Any) -> None:
        if not isinstance(payload, dict) or not payload.get("name"):
            return self._send(handler, 400, {"error": "A repo name is required"})
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        url = f"{self.url}/{PREFIXES[repo_type]}{repo_id}"
        with self._lock:
            if repo_id in self.repos:
                return self._send(handler, 409, {"error": f"You already created this {repo_type} repo", "url": url})
            self.repos[repo_id] = {"id": repo_id, "type": repo_type, "private": payload.get("visibility") == "private",
                                   "visibility": payload.get("visibility"), "files": {}, "lfs_paths": set(),
                                   "sha": hashlib.sha1(repo_id.encode()).hexdigest()}
        self._send(handler, 200, {"url": url, "name": repo_id, "id": hashlib.md5(repo_id.encode()).hexdigest()[:24]})

    def _repo_info(self, handler: BaseHTTPRequestHandler, *_: Any, repo: dict, **__: Any) -> None:
        self._send(handler, 200, {"id": repo["id"], "sha": repo["sha"], "private": repo["private"],
                                  "siblings": [{"rfilename": path} for path in sorted(repo["files"])]})

    def _validate_yaml(self, handler: BaseHTTPRequestHandler, *_: Any, **__: Any) -> None:
        self._send(handler, 200, {"errors": [], "warnings": []})

    def _xet_token(self, handler: BaseHTTPRequestHandler, *_: Any, **__: Any) -> None:
        self._send(handler, 501, {"error": "This loopback Hub has no Xet storage: set HF_HUB_DISABLE_XET=1"})

    def _preupload(self, handler: BaseHTTPRequestHandler, payload: dict, body: bytes, *, repo: dict,
                   **_: Any) -> None:
        files = []
        for file in payload["files"]:
            path, size, sample = file["path"], file["size"], base64.b64decode(file["sample"])
            lfs = self.lfs and (path.lower().endswith(LFS_SUFFIXES) or size >= 10 * 2**20 or b"\0" in sample)
            stored = repo["files"].get(path)
            oid = None if stored is None else (hashlib.sha256(stored).hexdigest() if path in repo["lfs_paths"]
                                               else git_blob_oid(stored))
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        self._send(handler, 200, {"files": files, "commitOid": repo["sha"]})

    def _lfs_batch(self, handler: BaseHTTPRequestHandler, payload: dict, body: bytes, *, repo: dict,
                   **_: Any) -> None:
        objects = []
        for obj in payload.get("objects", []):
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.lfs_objects:
                verify = f"{self.url}/{PREFIXES[repo['type']]}{repo['id']}.git/info/lfs/objects/verify"
                entry["actions"] = {"upload": {"href": f"{self.url}/lfs-objects/{obj['oid']}?size={obj['size']}"},
                                    "verify": {"href": verify}}
            objects.append(entry)
        self._send(handler, 200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                   {"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_upload(self, handler: BaseHTTPRequestHandler, payload: Any, body: bytes, *, oid: str,
                    query: dict, **_: Any) -> None:
        if hashlib.sha256(body).hexdigest() != oid or str(len(body)) != query.get("size", [""])[0]:
            return self._send(handler, 400, {"error": f"Uploaded content does not match oid {oid}"})
        with self._lock:
            self.lfs_objects[oid] = body
        self._send(handler, 200, {})

    def _lfs_verify(self, handler: BaseHTTPRequestHandler, payload: dict, body: bytes, **_: Any) -> None:
        data = self.lfs_objects.get(payload.get("oid"))
        if data is None or len(data) != payload.get("size"):
            return self._send(handler, 404, {"error": f"Object {payload.get('oid')} not found"})
        self._send(handler, 200, {"message": "Object verified"})

    def _commit(self, handler: BaseHTTPRequestHandler, payload: Any, body: bytes, *, repo: dict, revision: str,
                query: dict, **_: Any) -> None:
        header: dict[str, Any] = {}
        files: dict[str, bytes] = {}
        lfs_paths: set[str] = set()
        deleted: list[str] = []
        try:
            for line in body.splitlines():
                item = json.loads(line) if line.strip() else None
                if item is None:
                    continue
                key, value = item["key"], item["value"]
                if key == "header":
                    header = value
                elif key == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "lfsFile":
                    if value["oid"] not in self.lfs_objects:
                        error = f"Your push was rejected because an LFS pointer points to no object: {value['path']}"
                        return self._send(handler, 400, {"error": error})
                    files[value["path"]] = self.lfs_objects[value["oid"]]
                    lfs_paths.add(value["path"])
                elif key in ("deletedFile", "deletedFolder"):
                    deleted.append(value["path"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            return self._send(handler, 400, {"error": f"Invalid commit payload: {exc}"})
        if not header.get("summary"):
            return self._send(handler, 400, {"error": "A commit summary (header) is required"})
        with self._lock:
            oid = hashlib.sha1(f"{repo['id']}:{len(self.commits)}:{header['summary']}".encode()).hexdigest()
            for path in deleted:
                for name in [p for p in repo["files"] if p == path or p.startswith(path.rstrip("/") + "/")]:
                    del repo["files"][name]
                    repo["lfs_paths"].discard(name)
            repo["files"].update(files)
            repo["lfs_paths"] = (repo["lfs_paths"] - set(files)) | lfs_paths
            repo["sha"] = oid
            self.commits.append({"repo_id": repo["id"], "repo_type": repo["type"], "revision": revision,
                                 "message": header["summary"], "description": header.get("description", ""),
                                 "parent_commit": header.get("parentCommit"), "files": files,
                                 "lfs_paths": lfs_paths, "deleted": deleted, "oid": oid})
        repo_url = f"{self.url}/{PREFIXES[repo['type']]}{repo['id']}"
        answer = {"success": True, "commitOid": oid, "commitUrl": f"{repo_url}/commit/{oid}", "hookOutput": ""}
        if query.get("create_pr"):
            answer["pullRequestUrl"] = f"{repo_url}/discussions/{len(self.commits)}"
        self._send(handler, 200, answer)
