"""Fixtures for the `hxq serve` tests: the real binary on a loopback ephemeral port.

Environment: HXQ_BIN (the hxq binary; default build/hxq), HXQ_TEST_DATA (default ../shared).
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HXQ = os.environ.get("HXQ_BIN", os.path.join(ROOT, "build", "hxq"))
DATA = os.environ.get("HXQ_TEST_DATA", os.path.join(os.path.dirname(ROOT), "shared"))
STORIES = os.path.join(DATA, "models", "stories260K-hf")
MAMBA = os.path.join(DATA, "models", "mamba2-neox-17m")
TEMPLATES = os.path.join(ROOT, "tests", "data", "chat_templates", "templates")
# Under AddressSanitizer everything is several times slower.
SLOW = os.environ.get("HXQ_SANITIZED") == "1"


def need(path):
    if not os.path.exists(path):
        pytest.skip(f"test data {path} not found")


class Server:
    def __init__(self, model, *args, env=None):
        need(model)
        cmd = [HXQ, "serve", "-m", model, "--port", "0", "--json", "--threads", "2", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read()
            raise RuntimeError(f"hxq serve did not start: {err}")
        ev = json.loads(line)
        assert ev["event"] == "listening", line
        self.port = ev["port"]
        self.url = f"http://127.0.0.1:{self.port}"
        ready = json.loads(self.proc.stdout.readline())
        assert ready["event"] == "ready", ready
        self.model_id = ready["model"]
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if requests.get(self.url + "/health", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.05)

    def post(self, path, body, **kw):
        kw.setdefault("timeout", 120)
        return requests.post(self.url + path, json=body, **kw)

    def get(self, path, **kw):
        kw.setdefault("timeout", 30)
        return requests.get(self.url + path, **kw)

    def complete(self, prompt, **fields):
        body = {"prompt": prompt, "temperature": 0, **fields}
        r = self.post("/v1/completions", body)
        assert r.status_code == 200, r.text
        return r.json()

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def stories():
    s = Server(STORIES, "--parallel", "4", "--chat-template-file", os.path.join(TEMPLATES, "chatml.jinja"))
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def mamba():
    s = Server(MAMBA, "--parallel", "4")
    yield s
    assert s.stop() == 0


def generate_cli(model, prompt, n):
    """`hxq generate --json` (the reference the server must match)."""
    out = subprocess.run([HXQ, "generate", "-m", model, "-p", prompt, "-n", str(n), "--json", "--threads", "2"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def sse_events(resp):
    """The `data:` payloads of an SSE response, in order ([DONE] as the string)."""
    out = []
    for line in resp.iter_lines(decode_unicode=False):
        if not line or line.startswith(b":"):
            continue
        assert line.startswith(b"data: "), line
        payload = line[6:].decode("utf-8")
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


sys.path.insert(0, os.path.dirname(__file__))
