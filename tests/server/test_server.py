"""`hxq serve` end to end: the real binary, real HTTP clients, loopback only."""
import json
import os
import random
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from conftest import MAMBA, SLOW, STORIES, TEMPLATES, Server, generate_cli, need, sse_events

PROMPTS = ["Once upon a time", "Lily and Ben went to the park", "The little dog", "One day, a cat"]


# ---- basics -------------------------------------------------------------------------------------

def test_health_and_models(stories):
    h = stories.get("/health").json()
    assert h["status"] == "ok" and h["slots"] == 4
    m = stories.get("/v1/models").json()
    assert m["object"] == "list" and m["data"][0]["id"] == stories.model_id == "stories260K-hf"
    assert m["data"][0]["meta"]["context_length"] == 512


@pytest.mark.parametrize("which", ["stories", "mamba"])
def test_greedy_completion_equals_generate(which, request):
    srv = request.getfixturevalue(which)
    model = STORIES if which == "stories" else MAMBA
    prompt = "Once upon a time" if which == "stories" else "The future of artificial intelligence"
    ref = generate_cli(model, prompt, 40)
    out = srv.complete(prompt, max_tokens=40)
    choice = out["choices"][0]
    assert choice["text"] == ref["text"]
    assert out["usage"]["prompt_tokens"] == len(ref["prompt_ids"])
    assert out["usage"]["completion_tokens"] == len(ref["ids"])
    assert choice["finish_reason"] == ("stop" if ref["stopped_at_eos"] else "length")
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-")
    assert out["hxq"]["decode_tokens_per_s"] > 0


def test_prompt_as_token_ids(stories):
    ids = stories.post("/tokenize", {"content": "Once upon a time", "add_special": True}).json()["tokens"]
    assert ids[0] == 1
    a = stories.complete(ids, max_tokens=16)["choices"][0]["text"]
    b = stories.complete("Once upon a time", max_tokens=16)["choices"][0]["text"]
    assert a == b


def test_stream_equals_non_stream(stories):
    body = {"prompt": "Lily and Ben", "max_tokens": 48, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    with stories.post("/v1/completions", body, stream=True) as r:
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 48
    text = "".join(c["choices"][0]["text"] for c in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    ref = stories.complete("Lily and Ben", max_tokens=48)
    assert text == ref["choices"][0]["text"]


def test_chat_stream_shape_and_equality(stories):
    msgs = [{"role": "system", "content": "You tell stories."}, {"role": "user", "content": "Tell me about a cat."}]
    full = stories.post("/v1/chat/completions", {"messages": msgs, "max_tokens": 24, "temperature": 0}).json()
    assert full["object"] == "chat.completion" and full["id"].startswith("chatcmpl-")
    content = full["choices"][0]["message"]["content"]
    assert full["choices"][0]["message"]["role"] == "assistant"
    with stories.post("/v1/chat/completions", {"messages": msgs, "max_tokens": 24, "temperature": 0, "stream": True},
                      stream=True) as r:
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    first = events[0]["choices"][0]["delta"]
    assert first["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == content
    assert events[-2]["choices"][0]["finish_reason"] in ("stop", "length")


def test_chat_prompt_is_jinja2_rendering(stories):
    """The chat endpoint renders with the template exactly as python3-jinja2 does."""
    jinja2 = pytest.importorskip("jinja2")
    src = open(os.path.join(TEMPLATES, "chatml.jinja"), encoding="utf-8").read()
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    msgs = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "A story, please."}]
    text = env.from_string(src).render(messages=msgs, add_generation_prompt=True, bos_token="<s>", eos_token="</s>")
    ids = stories.post("/tokenize", {"content": text}).json()["tokens"]
    chat = stories.post("/v1/chat/completions", {"messages": msgs, "max_tokens": 20, "temperature": 0}).json()
    assert chat["usage"]["prompt_tokens"] == len(ids)
    comp = stories.complete(ids, max_tokens=20)
    assert chat["choices"][0]["message"]["content"] == comp["choices"][0]["text"]


def test_stop_strings(stories):
    ref = stories.complete("Once upon a time", max_tokens=60)["choices"][0]["text"]
    stop = ref[20:24]
    cut = ref[: ref.index(stop)]
    out = stories.complete("Once upon a time", max_tokens=60, stop=[stop, "zzzz"])
    assert out["choices"][0]["text"] == cut and out["choices"][0]["finish_reason"] == "stop"
    body = {"prompt": "Once upon a time", "max_tokens": 60, "temperature": 0, "stop": stop, "stream": True}
    with stories.post("/v1/completions", body, stream=True) as r:
        ev = sse_events(r)
    assert "".join(e["choices"][0]["text"] for e in ev[:-1]) == cut


def test_logprobs_concatenate_to_content(stories):
    msgs = [{"role": "user", "content": "Tell me a story"}]
    out = stories.post("/v1/chat/completions", {"messages": msgs, "max_tokens": 30, "temperature": 0,
                                                  "logprobs": True, "top_logprobs": 3}).json()
    lp = out["choices"][0]["logprobs"]["content"]
    assert "".join(t["token"] for t in lp) == out["choices"][0]["message"]["content"]
    for t in lp:
        assert len(t["top_logprobs"]) == 3 and t["logprob"] <= 0
        assert t["bytes"] == list(t["token"].encode("utf-8"))
        tops = [x["logprob"] for x in t["top_logprobs"]]
        assert tops == sorted(tops, reverse=True)
        assert abs(t["logprob"] - tops[0]) < 1e-6  # greedy: the chosen token is the most likely
    leg = stories.complete("Once upon a time", max_tokens=10, logprobs=2)["choices"][0]
    assert "".join(leg["logprobs"]["tokens"]) == leg["text"]
    assert len(leg["logprobs"]["top_logprobs"][0]) <= 2


def test_sampling_is_seeded(stories):
    a = stories.complete("The little dog", max_tokens=30, temperature=0.9, top_p=0.95, top_k=40, min_p=0.05, seed=7)
    b = stories.complete("The little dog", max_tokens=30, temperature=0.9, top_p=0.95, top_k=40, min_p=0.05, seed=7)
    c = stories.complete("The little dog", max_tokens=30, temperature=0.9, top_p=0.95, top_k=40, min_p=0.05, seed=8)
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    assert a["choices"][0]["text"] != c["choices"][0]["text"]


# ---- scheduling ---------------------------------------------------------------------------------

def test_one_slot_and_many_slots_agree(stories):
    one = Server(STORIES, "--parallel", "1")
    try:
        ref = [one.complete(p, max_tokens=40)["choices"][0]["text"] for p in PROMPTS]
    finally:
        assert one.stop() == 0
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda p: stories.complete(p, max_tokens=40)["choices"][0]["text"], PROMPTS))
    assert got == ref


@pytest.mark.parametrize("which", ["stories", "mamba"])
def test_eight_concurrent_streams(which, request):
    srv = request.getfixturevalue(which)
    prompts = [PROMPTS[i % 4] + " " * (i // 4) for i in range(8)]
    ref = {p: srv.complete(p, max_tokens=32)["choices"][0]["text"] for p in prompts}

    def stream(p):
        body = {"prompt": p, "max_tokens": 32, "temperature": 0, "stream": True}
        with srv.post("/v1/completions", body, stream=True) as r:
            ev = sse_events(r)
        assert ev[-1] == "[DONE]"
        return "".join(e["choices"][0]["text"] for e in ev[:-1])

    with ThreadPoolExecutor(8) as ex:
        got = list(ex.map(stream, prompts))
    assert got == [ref[p] for p in prompts]


def wait_idle(srv, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        h = srv.get("/health").json()
        if h["slots_active"] == 0 and h["queue"] == 0:
            return True
        time.sleep(0.05)
    return False


def metric(srv, name):
    for line in srv.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def test_disconnect_frees_the_slot(mamba):
    before = metric(mamba, "hxq_requests_cancelled_total")
    body = {"prompt": "The", "max_tokens": 60000, "ignore_eos": True, "stream": True}
    r = mamba.post("/v1/completions", body, stream=True)
    it = r.iter_lines()
    for _ in range(5):
        next(it)
    r.close()
    assert wait_idle(mamba), "the slot was not freed"
    assert metric(mamba, "hxq_requests_cancelled_total") == before + 1
    # Not streamed: the client gives up and closes the connection; the generation stops too.
    body = json.dumps({"prompt": "The", "max_tokens": 60000, "ignore_eos": True}).encode()
    with socket.create_connection(("127.0.0.1", mamba.port)) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        time.sleep(0.5)
        assert mamba.get("/health").json()["slots_active"] == 1
    assert wait_idle(mamba, 15), "the slot was not freed after a non-streamed client left"
    assert metric(mamba, "hxq_requests_cancelled_total") == before + 2


def test_queue_full_is_429(tmp_path):
    srv = Server(MAMBA, "--parallel", "1", "--queue", "1")
    try:
        body = {"prompt": "The", "max_tokens": 60000, "ignore_eos": True, "stream": True}
        first = srv.post("/v1/completions", body, stream=True)
        lines = first.iter_lines()  # (kept: a dropped iterator closes the connection)
        next(lines)  # running
        second = srv.post("/v1/completions", body, stream=True)  # queued
        time.sleep(0.2)
        third = srv.post("/v1/completions", {"prompt": "The", "max_tokens": 4})
        assert third.status_code == 429 and third.headers["Retry-After"] == "1"
        assert third.json()["error"]["code"] == "queue_full"
        first.close()
        second.close()
    finally:
        assert srv.stop() == 0


def test_sigterm_drains_running_streams():
    srv = Server(STORIES, "--parallel", "2")
    body = {"prompt": "Once upon a time", "max_tokens": 200, "ignore_eos": True, "stream": True, "temperature": 0}
    r = srv.post("/v1/completions", body, stream=True)
    it = r.iter_lines()
    next(it)
    srv.proc.send_signal(signal.SIGTERM)
    rest = [line for line in it if line]
    assert rest[-1] == b"data: [DONE]"
    assert json.loads(rest[-2][6:])["choices"][0]["finish_reason"] == "length"
    assert srv.proc.wait(timeout=30) == 0


# ---- prefix-state reuse -------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["mamba", "stories"])
def test_second_turn_reuses_the_prefix(which, request):
    srv = request.getfixturevalue(which)
    base = ("Once upon a time there was a little girl who lived in a small house near the woods. " * 6
            if which == "stories" else
            "The history of the city begins in the early medieval period, when a small settlement grew up. " * 8)
    turn1 = srv.complete(base, max_tokens=16)
    assert turn1["usage"]["prompt_tokens"] > 64
    # Turn 2 continues turn 1's prompt and answer: with reuse only the new tokens are prefilled.
    prompt2 = base + turn1["choices"][0]["text"] + " And then"
    warm = srv.complete(prompt2, max_tokens=12, logprobs=5)
    cold = srv.complete(prompt2, max_tokens=12, logprobs=5, cache_prompt=False)
    # At least turn 1's prompt but its last token (the snapshot is taken before it: the text that
    # follows may merge with it into another token).
    assert warm["usage"]["prompt_tokens_details"]["cached_tokens"] >= turn1["usage"]["prompt_tokens"] - 1
    assert cold["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert warm["choices"][0]["text"] == cold["choices"][0]["text"]
    for a, b in zip(warm["choices"][0]["logprobs"]["token_logprobs"], cold["choices"][0]["logprobs"]["token_logprobs"]):
        assert abs(a - b) < 1e-3  # the same math; only the prefill's chunking differs (tolerance: rounding)


# ---- errors and abuse ---------------------------------------------------------------------------

def error_of(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    e = r.json()["error"]
    assert set(e) == {"message", "type", "param", "code"} and e["message"]
    return e


def test_request_errors(stories):
    post = stories.post
    assert error_of(post("/v1/completions", {"prompt": "x", "n": 2}), 400)["param"] == "n"
    assert error_of(post("/v1/completions", {"prompt": "x", "temperature": "hot"}), 400)["param"] == "temperature"
    assert error_of(post("/v1/completions", {"prompt": "x", "max_tokens": -1}), 400)["param"] == "max_tokens"
    assert error_of(post("/v1/completions", {"prompt": "x", "top_p": 0}), 400)["param"] == "top_p"
    assert error_of(post("/v1/completions", {"prompt": [1, 99999]}), 400)["param"] == "prompt"
    assert error_of(post("/v1/completions", {"prompt": ["a", "b"]}), 400)["param"] == "prompt"
    assert error_of(post("/v1/completions", {}), 400)["param"] == "prompt"
    assert error_of(post("/v1/chat/completions", {"messages": []}), 400)["param"] == "messages"
    assert error_of(post("/v1/chat/completions", {"messages": [{"content": "x"}]}), 400)["param"] == "messages[0].role"
    e = error_of(post("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}), 400)
    assert "text only" in e["message"]
    e = error_of(post("/v1/completions", {"prompt": "x", "model": "gpt-4"}), 404)
    assert e["code"] == "model_not_found"
    e = error_of(post("/v1/completions", {"prompt": "word " * 600}), 400)
    assert e["code"] == "context_length_exceeded"
    e = error_of(post("/v1/completions", {"prompt": "x", "max_tokens": 600}), 400)
    assert e["code"] == "context_length_exceeded"
    e = error_of(stories.get("/v1/nothing"), 404)
    e = error_of(requests.post(stories.url + "/v1/completions", data=b'{"prompt": "x"', timeout=10), 400)
    assert "not valid JSON" in e["message"]
    error_of(requests.post(stories.url + "/v1/completions", data=b"", timeout=10), 400)
    error_of(requests.post(stories.url + "/v1/completions", data=b"[1,2]", timeout=10), 400)
    # Accepted: unknown fields, null fields, integral floats.
    ok = post("/v1/completions", {"prompt": "x", "max_tokens": 2.0, "frobnicate": {"a": 1}, "top_k": None})
    assert ok.status_code == 200, ok.text


def test_body_over_the_cap_is_413():
    srv = Server(STORIES, "--max-body-kb", "4")
    try:
        r = srv.post("/v1/completions", {"prompt": "x" * 10000})
        error_of(r, 413)
        assert srv.get("/health").status_code == 200
    finally:
        assert srv.stop() == 0


def test_api_key():
    srv = Server(STORIES, "--api-key", "s3cret")
    try:
        assert srv.get("/health").status_code == 200  # public
        assert error_of(srv.get("/v1/models"), 401)["code"] == "invalid_api_key"
        error_of(srv.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
        assert srv.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    finally:
        assert srv.stop() == 0


def raw(port, data, read=True, timeout=5.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if not read:
            return b""
        s.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                out += b
        except (socket.timeout, ConnectionResetError):
            pass
        return out


def test_a_few_thousand_bad_requests_leave_the_server_healthy():
    srv = Server(STORIES, "--idle-timeout", "2", "--max-body-kb", "64")
    rng = random.Random(1234)
    n_total = 600 if SLOW else 2500
    fields = ["prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop", "stream",
              "stream_options", "n", "logprobs", "messages", "model", "max_completion_tokens", "top_logprobs"]
    weird = [None, True, -1, 0, 1e308, -1e308, "", "x" * 3000, [], {}, [None], [[1]], {"a": []}, 2 ** 64, -(2 ** 63),
             0.5, [1, -5], ["a", 3], [{"role": 5}], [{"role": "user", "content": {"x": 1}}], "\udcff".encode("utf-8", "surrogatepass").decode("utf-8", "replace")]
    good = json.dumps({"prompt": "Once", "max_tokens": 3}).encode()
    session = requests.Session()
    try:
        statuses = {}
        t0 = time.time()
        for i in range(n_total):
            kind = i % 5
            if kind == 0:  # wrong values and types
                body = {rng.choice(fields): rng.choice(weird) for _ in range(rng.randint(1, 4))}
                body.setdefault("max_tokens", 2)
                ep = rng.choice(["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"])
                r = session.post(srv.url + ep, data=json.dumps(body), timeout=30)
                code = r.status_code
                assert code < 500, (body, r.text)
                if code != 200:
                    assert "error" in r.json()
            elif kind == 1:  # truncated / corrupted JSON
                cut = good[: rng.randint(0, len(good) - 1)]
                if rng.random() < 0.5:
                    cut = bytes(b ^ (1 << rng.randint(0, 7)) if rng.random() < 0.1 else b for b in good)
                r = session.post(srv.url + "/v1/completions", data=cut, timeout=30)
                code = r.status_code
                assert code < 500, (cut, r.text)
            elif kind == 2:  # malformed HTTP on a raw socket
                junk = rng.choice([b"GARBAGE\r\n\r\n", b"POST /v1/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
                                   b"POST /v1/completions HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n{",
                                   b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n", bytes(rng.getrandbits(8) for _ in range(64)),
                                   b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"])
                out = raw(srv.port, junk)
                code = int(out.split(b" ")[1]) if out.startswith(b"HTTP/1.1 ") else 0
                assert code < 500 or code == 0, out[:200]
            elif kind == 3:  # oversized body
                r = session.post(srv.url + "/v1/completions", data=b"{" + b" " * (70 << 10) + b"}", timeout=30)
                code = r.status_code
                assert code == 413
            else:  # wrong methods and paths
                r = session.request(rng.choice(["GET", "PUT", "DELETE", "PATCH"]),
                                    srv.url + rng.choice(["/v1/completions", "/v1/chat/completions", "/x", "/v1/models/../x"]),
                                    timeout=30)
                code = r.status_code
                assert 400 <= code < 500
            statuses[code] = statuses.get(code, 0) + 1
        # Slow clients: a request that never finishes its headers, bodies that stop half way.
        slow = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(4)]
        for s in slow:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prom")
        ok = srv.complete("Once upon a time", max_tokens=8)  # served meanwhile
        assert ok["choices"][0]["text"]
        time.sleep(2.5)  # past --idle-timeout: the server closes them
        for s in slow:
            s.settimeout(5)
            try:
                data = s.recv(1000)
                assert data == b"" or data.startswith(b"HTTP/1.1 4"), data
            except (ConnectionResetError, socket.timeout):
                pass
            s.close()
        assert srv.get("/health").json()["status"] == "ok"
        assert wait_idle(srv)
        assert srv.complete("Once upon a time", max_tokens=8)["choices"][0]["text"] == ok["choices"][0]["text"]
        assert time.time() - t0 < (600 if SLOW else 240)
        assert sum(statuses.values()) == n_total
    finally:
        assert srv.stop() == 0


def test_tokenize_detokenize_and_metrics(stories):
    ids = stories.post("/tokenize", {"content": "Hello world", "add_special": True}).json()["tokens"]
    assert ids[0] == 1
    assert stories.post("/detokenize", {"tokens": ids[1:]}).json()["content"] == "Hello world"
    pieces = stories.post("/tokenize", {"content": "Hello", "with_pieces": True}).json()["tokens"]
    assert "".join(p["piece"] for p in pieces).strip() == "Hello"
    error_of(stories.post("/detokenize", {"tokens": [-1]}), 400)
    text = stories.get("/metrics").text
    for name in ["hxq_requests_total", "hxq_prompt_tokens_total", "hxq_generated_tokens_total", "hxq_queue_depth",
                 "hxq_active_slots", "hxq_time_to_first_token_seconds_bucket", "hxq_inter_token_seconds_count"]:
        assert name in text


def test_start_up_errors(tmp_path):
    import subprocess
    from conftest import HXQ
    r = subprocess.run([HXQ, "serve", "-m", str(tmp_path), "--port", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "config.json" in r.stderr and r.stderr.count("\n") <= 2
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}{{ m.content }")
    need(STORIES)
    r = subprocess.run([HXQ, "serve", "-m", STORIES, "--port", "0", "--chat-template-file", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "bad.jinja" in r.stderr
    r = subprocess.run([HXQ, "serve", "-m", STORIES, "--parallel", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
