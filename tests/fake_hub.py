"""A local stand-in for the Hugging Face Hub: just the endpoints ``HfApi.create_repo``,
``create_branch`` and ``create_commit`` call (with every file uploaded as a regular git blob)."""

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    """``with FakeHub() as hub``: ``hub.endpoint`` to pass to HfApi; ``hub.requests`` lists (method, path);
    ``hub.repos[repo_id]`` holds ``private`` and ``branches`` ({name: {path: bytes}}).
    ``hub.fail[step] = (status, message)`` makes "create", "branch", "preupload" or "commit" fail."""

    def __init__(self):
        self.requests, self.repos, self.fail = [], {}, {}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hub.requests.append(("POST", self.path))
                status, payload = hub.handle(self.path.split("?")[0], body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if status >= 400:
                    self.send_header("X-Error-Message", payload["error"])
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _failure(self, step):
        status, message = self.fail[step]
        return status, {"error": message}

    def handle(self, path: str, body: bytes):
        if path == "/api/repos/create":
            if "create" in self.fail:
                return self._failure("create")
            request = json.loads(body)
            repo_id = f"{request['organization']}/{request['name']}" if request.get("organization") else request["name"]
            self.repos.setdefault(repo_id, {"private": request.get("visibility") == "private",
                                            "branches": {"main": {}}})
            return 200, {"url": f"{self.endpoint}/{repo_id}"}
        if path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(branch|preupload|commit)/(.+)", path)
        if not match:
            return 404, {"error": f"fake hub: no route {path}"}
        repo_id, step, revision = match.groups()
        if step in self.fail:
            return self._failure(step)
        if repo_id not in self.repos:
            return 404, {"error": "Repository not found"}
        branches = self.repos[repo_id]["branches"]
        if step == "branch":
            branches.setdefault(revision, dict(branches["main"]))
            return 200, {}
        if step == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        if revision not in branches:
            return 404, {"error": f"Invalid rev id: {revision}"}
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                branches[revision][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
        return 200, {"commitUrl": f"{self.endpoint}/{repo_id}/commit/{'0' * 40}", "commitOid": "0" * 40,
                     "success": True}
