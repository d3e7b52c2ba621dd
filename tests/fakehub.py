"""A minimal Hugging Face Hub on 127.0.0.1 for download tests: the endpoints huggingface_hub's snapshot_download
uses for plain (non-Xet) files — revision info, the recursive tree, and resolve URLs with HEAD and ranged GET. It
counts the bytes it serves and records ranged requests, and can cut a file's first download halfway (the
connection closes early, as a dropped network would), so a test can tell a resumed download from a restarted one."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


class FakeHub:
    """repos: repo id -> {path in repo: local file}. Use as a context manager; `url` is the endpoint."""

    def __init__(self, repos: dict[str, dict[str, Path]], cut_once: tuple[str, ...] = ()):
        self.repos = repos
        self.bytes_served = 0
        self.range_starts: list[int] = []
        self.cut_once = set(cut_once)  # files whose first full GET stops halfway
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._resolve(self, body=False)

            def do_GET(self):
                if self.path.startswith("/api/models/"):
                    hub._api(self)
                else:
                    hub._resolve(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    @staticmethod
    def cut_at(size: int) -> int:
        """Where a cut transfer stops: 80% in (past huggingface_hub's first 10 MB write for files over 13 MB)."""
        return size * 4 // 5

    def __enter__(self) -> "FakeHub":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()

    def _send_json(self, handler, data, status: int = 200) -> None:
        body = json.dumps(data).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _api(self, handler) -> None:
        m = re.match(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/?]+)", handler.path)
        files = self.repos.get(m[1]) if m else None
        if files is None:
            return _not_found(handler, "RepoNotFound")
        entries = [{"type": "file", "path": rel, "size": p.stat().st_size, "oid": _sha1(p),
                    "lfs": {"oid": _sha256(p), "size": p.stat().st_size, "pointerSize": 130}}
                   for rel, p in files.items()]
        if m[2] == "revision":
            self._send_json(handler, {"id": m[1], "sha": COMMIT, "siblings": [{"rfilename": r} for r in files]})
        else:
            self._send_json(handler, entries)

    def _resolve(self, handler, body: bool) -> None:
        m = re.match(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", handler.path)
        path = self.repos.get(m[1], {}).get(m[3]) if m else None
        if path is None:
            return _not_found(handler, "EntryNotFound")
        data = path.read_bytes()
        start = 0
        rng = re.match(r"bytes=(\d+)-", handler.headers.get("Range", ""))
        if rng and body:
            start = int(rng[1])
            self.range_starts.append(start)
        handler.send_response(206 if start else 200)
        handler.send_header("X-Repo-Commit", COMMIT)
        handler.send_header("ETag", f'"{_sha256(path)}"')
        handler.send_header("X-Linked-Etag", f'"{_sha256(path)}"')
        handler.send_header("X-Linked-Size", str(len(data)))
        handler.send_header("Content-Length", str(len(data) - start))
        if start:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        handler.end_headers()
        if body and m[3] in self.cut_once and not start:
            self.cut_once.discard(m[3])
            handler.wfile.write(data[:self.cut_at(len(data))])  # then the connection closes: a transfer cut short
            handler.close_connection = True
            self.bytes_served += self.cut_at(len(data))
        elif body:
            handler.wfile.write(data[start:])
            self.bytes_served += len(data) - start


def _not_found(handler, code: str) -> None:
    """A 404 with the Hub's error code header (huggingface_hub maps it to its exception types)."""
    handler.send_response(404)
    handler.send_header("X-Error-Code", code)
    handler.send_header("Content-Length", "0")
    handler.end_headers()


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _sha1(p: Path) -> str:
    return hashlib.sha1(p.read_bytes()).hexdigest()
