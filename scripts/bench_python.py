#!/usr/bin/env python3
"""The cost of the Python layer: decode speed of hxq's Python generate / stream against the CLI's
`hxq generate` on the same model, prompt and thread count, alternated in each round (medians).

    <venv>/bin/python scripts/bench_python.py --hxq build/hxq --model DIR [--rounds 5 --gen 64 --threads 2]

Both report decode tokens/s measured inside the engine loop the same way (time from the first
sampled token to the last forward); `wall` is the whole Python call (prefill + decode + the Python
side) against the CLI's prefill + decode time (its process start and model load excluded).
"""
import argparse
import json
import statistics
import subprocess
import sys
import time

import hxq


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hxq", default="build/hxq")
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", default="The history of the city begins")
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    m = hxq.load(a.model, threads=a.threads)
    m.generate(a.prompt, max_tokens=4)  # warm-up (page in the weights)
    rows = {"cli_decode": [], "py_decode": [], "py_stream_decode": [], "cli_wall": [], "py_wall": []}
    for r in range(a.rounds):
        order = ["cli", "py"] if r % 2 == 0 else ["py", "cli"]
        for who in order:
            if who == "cli":
                out = subprocess.run([a.hxq, "generate", "-m", a.model, "-p", a.prompt, "-n", str(a.gen), "--threads",
                                      str(a.threads), "--json"], capture_output=True, text=True, check=True)
                j = json.loads(out.stdout)
                rows["cli_decode"].append(j["decode_tokens_per_s"])
                n_prompt, n_dec = len(j["prompt_ids"]), max(len(j["ids"]) - 1, 0)
                rows["cli_wall"].append(n_prompt / j["prefill_tokens_per_s"] + n_dec / j["decode_tokens_per_s"])
            else:
                t0 = time.perf_counter()
                c = m.complete(a.prompt, max_tokens=a.gen)
                rows["py_wall"].append(time.perf_counter() - t0)
                rows["py_decode"].append(c["decode_tokens_per_s"])
                st = m.stream(a.prompt, max_tokens=a.gen)
                for _ in st:
                    pass
                rows["py_stream_decode"].append(st.stats["decode_tokens_per_s"])
    med = {k: statistics.median(v) for k, v in rows.items()}
    res = {
        "model": a.model, "threads": a.threads, "gen": a.gen, "rounds": a.rounds, "medians": med,
        "py_vs_cli_decode": med["py_decode"] / med["cli_decode"],
        "stream_vs_cli_decode": med["py_stream_decode"] / med["cli_decode"],
        "py_vs_cli_wall": med["py_wall"] / med["cli_wall"],
        "per_round": rows,
    }
    if a.json:
        print(json.dumps(res))
        return
    print(f"{a.model}: {a.rounds} rounds, {a.gen} tokens, {a.threads} threads (medians)")
    print(f"  decode tok/s  CLI {med['cli_decode']:.1f} | Python generate {med['py_decode']:.1f} "
          f"({res['py_vs_cli_decode']:.3f}x) | Python stream {med['py_stream_decode']:.1f} ({res['stream_vs_cli_decode']:.3f}x)")
    print(f"  call time     CLI prefill+decode {med['cli_wall'] * 1e3:.1f} ms | Python complete() {med['py_wall'] * 1e3:.1f} ms "
          f"({res['py_vs_cli_wall']:.3f}x)")


if __name__ == "__main__":
    sys.exit(main())
