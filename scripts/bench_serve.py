#!/usr/bin/python3
"""Load generator for `hxq serve` (docs/PERFORMANCE.md, "Server").

Starts `hxq serve` on a free loopback port (or uses --url), then measures, with streamed
/v1/completions requests (ignore_eos, so every request generates exactly --gen tokens):

  single    one stream: decode tokens/s, time to first token (TTFT), inter-token latency (ITL),
            next to `hxq generate --json` on the same prompt in the same run (the baseline)
  streams   S concurrent streams (S = 2, 4 by default): aggregate decode tokens/s while all decode
  ttft      TTFT of a short prompt, idle and while 3 streams decode: the same prompt each time
            (after the first, served from the prefix cache: one token to prefill) and a new prompt
            each time (cache_prompt = false: the whole prompt prefilled)
  prefix    second chat turn of a ~1,500-token conversation: TTFT with prefix-state reuse vs a
            full re-prefill (cache_prompt = false)

Medians over --rounds; p50/p99 over all samples. `--json` prints one JSON object.
Example: /usr/bin/python3 scripts/bench_serve.py --hxq build/hxq --model /tmp/m370-hxq --threads 2
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import requests

WORDS = ("the history of the city begins in a small settlement by the river where people traded grain wool and "
         "salt and over the centuries the town grew into a market with walls a cathedral and a university").split()


def text_of(n_words, seed=0):
    return " ".join(WORDS[(i * 7 + seed) % len(WORDS)] for i in range(n_words))


def pct(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(q * (len(xs) - 1)))))
    return xs[k]


class Client:
    def __init__(self, url, key=None):
        self.url = url
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def stream(self, prompt, gen, **extra):
        """One streamed completion: (ttft_s, [token arrival times], usage/hxq of the final chunk)."""
        body = {"prompt": prompt, "max_tokens": gen, "temperature": 0, "ignore_eos": True, "stream": True,
                "logprobs": 0, **extra}
        t0 = time.perf_counter()
        times, final = [], {}
        with requests.post(self.url + "/v1/completions", json=body, stream=True, headers=self.headers, timeout=600) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line or line.startswith(b":"):
                    continue
                payload = line[6:]
                if payload == b"[DONE]":
                    break
                ev = json.loads(payload)
                ch = ev["choices"][0] if ev["choices"] else {}
                n = len((ch.get("logprobs") or {}).get("tokens", []))
                now = time.perf_counter()
                times.extend([now] * n)
                if "hxq" in ev:
                    final = ev
        return (times[0] - t0 if times else float("nan")), [t - t0 for t in times], final


def decode_rate(times):
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hxq", default="build/hxq")
    ap.add_argument("--model", help="model directory (starts a server; also the `hxq generate` baseline)")
    ap.add_argument("--url", help="use a running server instead")
    ap.add_argument("--api-key")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--prompt-words", type=int, default=48, help="words of the decode prompts (~1.3 tokens each)")
    ap.add_argument("--gen", type=int, default=64, help="tokens generated per request")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--streams", default="2,4")
    ap.add_argument("--prefix-words", type=int, default=1150, help="words of the conversation (~1,500 tokens)")
    ap.add_argument("--only", default="single,streams,ttft,prefix")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    only = set(a.only.split(","))

    proc = None
    url = a.url
    if not url:
        if not a.model:
            ap.error("--model or --url is required")
        cmd = [a.hxq, "serve", "-m", a.model, "--port", "0", "--json", "--parallel", str(a.parallel),
               "--max-tokens", str(max(a.gen, 16))]
        if a.threads:
            cmd += ["--threads", str(a.threads)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        port = json.loads(proc.stdout.readline())["port"]
        json.loads(proc.stdout.readline())  # ready
        url = f"http://127.0.0.1:{port}"
    cl = Client(url, a.api_key)
    res = {"url": url, "model": a.model, "gen": a.gen, "parallel": a.parallel}
    log = (lambda *x: None) if a.json else (lambda *x: print(*x, flush=True))
    try:
        prompt = text_of(a.prompt_words)
        cl.stream(prompt, 8)  # warm up (page in the weights)

        if "single" in only:
            rates, ttfts, itls, base = [], [], [], []
            for r in range(a.rounds):
                ttft, times, _ = cl.stream(prompt, a.gen)
                rates.append(decode_rate(times))
                ttfts.append(ttft)
                itls += [times[i + 1] - times[i] for i in range(len(times) - 1)]
                if a.model:
                    cmd = [a.hxq, "generate", "-m", a.model, "-p", prompt, "-n", str(a.gen), "--json"]
                    if a.threads:
                        cmd += ["--threads", str(a.threads)]
                    base.append(json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
                                ["decode_tokens_per_s"])
            res["single"] = {"decode_tokens_per_s": statistics.median(rates), "ttft_p50_ms": 1e3 * pct(ttfts, 0.5),
                             "ttft_p99_ms": 1e3 * pct(ttfts, 0.99), "itl_p50_ms": 1e3 * pct(itls, 0.5),
                             "itl_p99_ms": 1e3 * pct(itls, 0.99), "runs": rates}
            if base:
                res["single"]["generate_decode_tokens_per_s"] = statistics.median(base)
                res["single"]["ratio_to_generate"] = statistics.median(rates) / statistics.median(base)
            log(f"single stream: {res['single']['decode_tokens_per_s']:.2f} tok/s"
                + (f" (hxq generate {statistics.median(base):.2f}, ratio {res['single']['ratio_to_generate']:.3f})" if base else "")
                + f", TTFT p50 {res['single']['ttft_p50_ms']:.0f} ms, ITL p50/p99 {res['single']['itl_p50_ms']:.1f}/{res['single']['itl_p99_ms']:.1f} ms")

        if "streams" in only:
            res["streams"] = {}
            for S in [int(x) for x in a.streams.split(",") if x]:
                aggs, itls = [], []
                for r in range(a.rounds):
                    out = [None] * S
                    # Absolute arrival times: each request's clock origin is its own start.
                    starts = [0.0] * S

                    def run(i):
                        starts[i] = time.perf_counter()
                        _, times, _ = cl.stream(text_of(a.prompt_words, seed=i + 1), a.gen)
                        out[i] = [starts[i] + t for t in times]

                    th = [threading.Thread(target=run, args=(i,)) for i in range(S)]
                    for t in th:
                        t.start()
                    for t in th:
                        t.join()
                    lo = max(ts[0] for ts in out)  # all streams decoding from here ...
                    hi = min(ts[-1] for ts in out)  # ... to here
                    n = sum(sum(1 for t in ts if lo <= t <= hi) for ts in out)
                    aggs.append((n - S) / (hi - lo) if hi > lo else float("nan"))
                    for ts in out:
                        itls += [ts[i + 1] - ts[i] for i in range(len(ts) - 1)]
                agg = statistics.median(aggs)
                res["streams"][str(S)] = {"aggregate_decode_tokens_per_s": agg, "itl_p50_ms": 1e3 * pct(itls, 0.5),
                                          "itl_p99_ms": 1e3 * pct(itls, 0.99), "runs": aggs}
                if "single" in res:
                    res["streams"][str(S)]["ratio_to_single"] = agg / res["single"]["decode_tokens_per_s"]
                log(f"{S} streams: aggregate {agg:.2f} tok/s"
                    + (f" ({res['streams'][str(S)]['ratio_to_single']:.2f}x single)" if "single" in res else "")
                    + f", ITL p50/p99 {1e3 * pct(itls, 0.5):.1f}/{1e3 * pct(itls, 0.99):.1f} ms")

        if "ttft" in only:
            short = text_of(12, seed=99)
            n = max(3, a.rounds)
            fresh_i = iter(range(1000, 100000))

            def fresh():  # a new short prompt, prefilled in full
                return cl.stream(text_of(12, seed=next(fresh_i)), 1, cache_prompt=False)[0]

            idle = [cl.stream(short, 1)[0] for _ in range(n)]
            idle_fresh = [fresh() for _ in range(n)]
            stop = threading.Event()

            def background(i):
                while not stop.is_set():
                    cl.stream(text_of(a.prompt_words, seed=50 + i), a.gen)

            bg = [threading.Thread(target=background, args=(i,)) for i in range(3)]
            for t in bg:
                t.start()
            time.sleep(2.0)
            loaded, loaded_fresh = [], []
            for _ in range(n * 2):
                loaded.append(cl.stream(short, 1)[0])
                time.sleep(0.3)
                loaded_fresh.append(fresh())
                time.sleep(0.3)
            stop.set()
            for t in bg:
                t.join()
            res["ttft"] = {"idle_p50_ms": 1e3 * pct(idle, 0.5), "idle_p99_ms": 1e3 * pct(idle, 0.99),
                           "loaded_p50_ms": 1e3 * pct(loaded, 0.5), "loaded_p99_ms": 1e3 * pct(loaded, 0.99),
                           "ratio_p50": pct(loaded, 0.5) / pct(idle, 0.5),
                           "fresh_idle_p50_ms": 1e3 * pct(idle_fresh, 0.5),
                           "fresh_idle_p99_ms": 1e3 * pct(idle_fresh, 0.99),
                           "fresh_loaded_p50_ms": 1e3 * pct(loaded_fresh, 0.5),
                           "fresh_loaded_p99_ms": 1e3 * pct(loaded_fresh, 0.99),
                           "fresh_ratio_p50": pct(loaded_fresh, 0.5) / pct(idle_fresh, 0.5)}
            r = res["ttft"]
            log(f"TTFT short prompt (cached): idle p50 {r['idle_p50_ms']:.0f} ms, with 3 streams decoding p50 "
                f"{r['loaded_p50_ms']:.0f} / p99 {r['loaded_p99_ms']:.0f} ms (ratio {r['ratio_p50']:.2f})")
            log(f"TTFT short prompt (new each time): idle p50 {r['fresh_idle_p50_ms']:.0f} ms, with 3 streams decoding "
                f"p50 {r['fresh_loaded_p50_ms']:.0f} / p99 {r['fresh_loaded_p99_ms']:.0f} ms (ratio {r['fresh_ratio_p50']:.2f})")

        if "prefix" in only:
            conv = text_of(a.prefix_words, seed=3)
            warm, cold, cached, ptoks = [], [], [], 0
            for r in range(a.rounds):
                base = conv + f" (round {r})"
                _, times, fin = cl.stream(base, 16, logprobs=0)
                # The answer as text: take it from a non-streamed rerun (same greedy tokens).
                ans = requests.post(url + "/v1/completions", headers=cl.headers, timeout=600,
                                    json={"prompt": base, "max_tokens": 16, "temperature": 0, "ignore_eos": True}).json()
                turn2 = base + ans["choices"][0]["text"] + " and then the next question about the walls"
                t, _, fw = cl.stream(turn2, 1)
                warm.append(t)
                cached.append(fw.get("hxq", {}).get("cached_tokens", 0))
                ptoks = fw.get("hxq", {}).get("prompt_tokens", 0)
                t, _, _ = cl.stream(turn2, 1, cache_prompt=False)
                cold.append(t)
            res["prefix"] = {"prompt_tokens": ptoks, "cached_tokens": statistics.median(cached),
                             "warm_ttft_ms": 1e3 * statistics.median(warm), "cold_ttft_ms": 1e3 * statistics.median(cold),
                             "ratio": statistics.median(warm) / statistics.median(cold)}
            log(f"second turn of {ptoks} tokens ({res['prefix']['cached_tokens']:.0f} cached): TTFT {res['prefix']['warm_ttft_ms']:.0f} ms"
                f" vs full re-prefill {res['prefix']['cold_ttft_ms']:.0f} ms (ratio {res['prefix']['ratio']:.3f})")
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=60)
    if a.json:
        print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
