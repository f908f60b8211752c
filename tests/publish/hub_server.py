"""A Hub-compatible HTTP server for tests: the endpoints the real ``huggingface_hub`` client uses to create a model
repository, commit files (small ones inline, large ones through the Git LFS batch API), list the tree and download.

State lives in memory. A commit is applied only when its whole NDJSON payload is valid and every LFS object it
names was uploaded, so a failure anywhere leaves the previous revision as it was. ``fail_next`` injects errors:
``server.fail_next("commit", 500)`` answers the next commit call with that status.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

LFS_THRESHOLD = 10_000  # bytes; larger files (and binary ones) go through LFS, as on the Hub


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubState:
    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}  # repo_id -> {"private": bool, "commits": [{"sha", "files"}]}
        self.lfs: dict[str, bytes] = {}  # sha256 -> content
        self.failures: dict[str, list[int]] = {}
        self.tokens_seen: list[str] = []
        self.card_metadata: list[dict] = []
        self.lock = threading.Lock()

    def head(self, repo_id: str) -> dict:
        commits = self.repos[repo_id]["commits"]
        return commits[-1] if commits else {"sha": "0" * 40, "files": {}}


class HubHandler(BaseHTTPRequestHandler):
    state: HubState
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    # -- helpers ---------------------------------------------------------------------------------------------------
    @property
    def base(self) -> str:
        return f"http://{self.headers['Host']}"

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload=None, headers: dict | None = None, raw: bytes | None = None) -> None:
        body = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else b"")
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if raw is None else "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": message}, {"X-Error-Message": " ".join(message.split())[:200]})

    def _injected(self, action: str) -> bool:
        with self.state.lock:
            queue = self.state.failures.get(action)
            status = queue.pop(0) if queue else None
        if status is not None:
            self._error(status, f"injected failure of {action}")
            return True
        return False

    def _record_token(self) -> None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            self.state.tokens_seen.append(auth[7:])

    def _repo(self, repo_id: str) -> dict | None:
        repo = self.state.repos.get(repo_id)
        if repo is None:
            self._send(404, {"error": f"Repository {repo_id} not found"}, {"X-Error-Code": "RepoNotFound"})
        return repo

    # -- routing ---------------------------------------------------------------------------------------------------
    def do_POST(self) -> None:
        self._record_token()
        path = unquote(urlparse(self.path).path)
        body = self._body()
        if path == "/api/repos/create":
            return self._create_repo(json.loads(body))
        if path.startswith("/api/models/") and "/preupload/" in path:
            repo_id = path[len("/api/models/") :].split("/preupload/")[0]
            return self._preupload(repo_id, json.loads(body))
        if path.startswith("/api/models/") and "/commit/" in path:
            repo_id = path[len("/api/models/") :].split("/commit/")[0]
            return self._commit(repo_id, body)
        if path.endswith(".git/info/lfs/objects/batch"):
            return self._lfs_batch(json.loads(body))
        if path == "/api/validate-yaml":
            return self._validate_yaml(json.loads(body))
        if path == "/lfs-verify":
            data = json.loads(body)
            return self._send(200 if data["oid"] in self.state.lfs else 404, {})
        self._error(404, f"no route for POST {path}")

    def do_PUT(self) -> None:
        path = unquote(urlparse(self.path).path)
        body = self._body()
        if path.startswith("/lfs-upload/"):
            if self._injected("lfs-upload"):
                return
            oid = path.rsplit("/", 1)[1]
            if hashlib.sha256(body).hexdigest() != oid:
                return self._error(400, "content does not match its sha256")
            self.state.lfs[oid] = body
            return self._send(200, {})
        self._error(404, f"no route for PUT {path}")

    def do_GET(self) -> None:
        self._record_token()
        parsed = urlparse(self.path)
        path = unquote(parsed.path)
        if path.startswith("/api/models/") and "/tree/" in path:
            repo_id, rest = path[len("/api/models/") :].split("/tree/", 1)
            return self._tree(repo_id, rest)
        if path.startswith("/api/models/"):
            rest = path[len("/api/models/") :]
            repo_id = rest.split("/revision/")[0]
            return self._info(repo_id)
        if "/resolve/" in path:
            return self._resolve(path)
        self._error(404, f"no route for GET {path}")

    do_HEAD = do_GET

    # -- endpoints -------------------------------------------------------------------------------------------------
    def _create_repo(self, data: dict) -> None:
        repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
        with self.state.lock:
            if repo_id in self.state.repos:
                return self._send(
                    409, {"error": "You already created this model repo", "url": f"{self.base}/{repo_id}"}
                )
            private = data.get("visibility", "private" if data.get("private") else "public") != "public"
            self.state.repos[repo_id] = {"private": private, "commits": []}
        self._send(200, {"url": f"{self.base}/{repo_id}", "name": repo_id})

    def _validate_yaml(self, data: dict) -> None:
        """The model card's metadata must be a YAML mapping (the Hub checks more, e.g. model-index fields)."""
        import yaml

        content = data["content"]
        if content.startswith("---"):  # a whole card: the metadata is its front matter
            content = content.split("---", 2)[1]
        try:
            metadata = yaml.safe_load(content)
        except yaml.YAMLError as exc:
            return self._error(400, f"Invalid YAML: {exc}")
        if not isinstance(metadata, dict):
            return self._error(400, "the metadata must be a mapping")
        self.state.card_metadata.append(metadata)
        self._send(200, {"errors": [], "warnings": []})

    def _preupload(self, repo_id: str, data: dict) -> None:
        if self._repo(repo_id) is None:
            return
        files = []
        for entry in data["files"]:
            sample = base64.b64decode(entry.get("sample", ""))
            binary = b"\0" in sample
            mode = "lfs" if entry["size"] > LFS_THRESHOLD or binary else "regular"
            files.append({"path": entry["path"], "uploadMode": mode, "shouldIgnore": False})
        self._send(200, {"files": files})

    def _lfs_batch(self, data: dict) -> None:
        objects = []
        for obj in data["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.state.lfs:
                entry["actions"] = {
                    "upload": {"href": f"{self.base}/lfs-upload/{obj['oid']}"},
                    "verify": {"href": f"{self.base}/lfs-verify"},
                }
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects})

    def _commit(self, repo_id: str, body: bytes) -> None:
        repo = self._repo(repo_id)
        if repo is None or self._injected("commit"):
            return
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line["key"] == "header"), None)
        if header is None:
            return self._error(400, "commit payload without header")
        with self.state.lock:
            files = dict(self.state.head(repo_id)["files"])
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "file":
                    files[value["path"]] = ("regular", base64.b64decode(value["content"]))
                elif key == "lfsFile":
                    if value["oid"] not in self.state.lfs:
                        return self._error(400, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                    files[value["path"]] = ("lfs", value["oid"])
                elif key in ("deletedFile", "deletedFolder"):
                    prefix = value["path"].rstrip("/")
                    files = {p: f for p, f in files.items() if p != prefix and not p.startswith(prefix + "/")}
            sha = hashlib.sha1(f"{repo_id}/{len(repo['commits'])}/{header['summary']}".encode()).hexdigest()
            repo["commits"].append({"sha": sha, "files": files, "summary": header["summary"]})
        self._send(
            200,
            {
                "commitUrl": f"{self.base}/{repo_id}/commit/{sha}",
                "commitOid": sha,
                "success": True,
                "commitMessage": header["summary"],
                "pullRequestUrl": None,
            },  # fmt: skip
        )

    def _entry(self, path: str, file: tuple) -> dict:
        kind, value = file
        if kind == "regular":
            return {"type": "file", "path": path, "size": len(value), "oid": git_blob_sha1(value)}
        content = self.state.lfs[value]
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{value}\nsize {len(content)}\n".encode()
        return {"type": "file", "path": path, "size": len(content), "oid": git_blob_sha1(pointer),
                "lfs": {"oid": value, "size": len(content), "pointerSize": len(pointer)}}  # fmt: skip

    def _info(self, repo_id: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        head = self.state.head(repo_id)
        self._send(200, {"id": repo_id, "modelId": repo_id, "sha": head["sha"], "private": repo["private"],
                         "siblings": [{"rfilename": p} for p in sorted(head["files"])]})  # fmt: skip

    def _tree(self, repo_id: str, rest: str) -> None:
        if self._repo(repo_id) is None:
            return
        prefix = rest.split("/", 1)[1] if "/" in rest else ""
        files = self.state.head(repo_id)["files"]
        entries = [self._entry(p, f) for p, f in sorted(files.items()) if p.startswith(prefix)]
        self._send(200, entries)

    def _resolve(self, path: str) -> None:
        repo_id, rest = path.lstrip("/").split("/resolve/", 1)
        if self._repo(repo_id) is None:
            return
        filename = rest.split("/", 1)[1]
        head = self.state.head(repo_id)
        file = head["files"].get(filename)
        if file is None:
            return self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
        kind, value = file
        content = value if kind == "regular" else self.state.lfs[value]
        headers = {"X-Repo-Commit": head["sha"], "ETag": f'"{git_blob_sha1(content)}"'}
        if kind == "lfs":
            headers.update({"X-Linked-Etag": f'"{value}"', "X-Linked-Size": str(len(content))})
        self._send(200, headers=headers, raw=content)


class HubServer:
    """Start with ``with HubServer() as hub:``; ``hub.endpoint`` is the URL for ``HF_ENDPOINT``."""

    def __init__(self) -> None:
        self.state = HubState()
        handler = type("Handler", (HubHandler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def fail_next(self, action: str, status: int, times: int = 1) -> None:
        self.state.failures.setdefault(action, []).extend([status] * times)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
