"""hxq's Python API against the CLI: the same engine, so the same numbers (bit for bit where the
CLI prints them exactly), plus streaming, errors, threads, the GIL and Ctrl-C."""
import json
import os
import signal
import threading
import time

import numpy as np
import pytest

import hxq
from conftest import ALICE, DATA, FIXTURES, MAMBA17M, STORIES, WIKI, cli_json, cli_logits, need, reference, run_cli
from tolerances import INCREMENTAL_VS_FULL_ABS


# ---- logits -------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["dense", "stories_v2", "stories_helix", "stories_v2_4", "mamba_v2"])
def test_logits_bit_identical_to_cli(which, ckpts, tmp_path):
    path = STORIES if which == "dense" else ckpts[which]
    ids = reference(MAMBA17M if which.startswith("mamba") else STORIES)[0]
    m = hxq.load(path, threads=2)
    got = m.logits(ids)
    assert got.dtype == np.float32 and got.shape == (len(ids), m.vocab_size)
    want = cli_logits(path, ids, tmp_path)
    assert np.array_equal(got, want)


def test_dense_logits_match_transformers():
    ids, ref = reference(STORIES)
    got = hxq.load(STORIES).logits(ids)
    assert np.abs(got - ref).max() < 2e-3  # the CLI's reference tolerance (tests/tolerances.h)


def test_forward_incremental_and_state(ckpts):
    m = hxq.load(ckpts["stories_v2"], exact=True)  # exact codebook math: only the summation order differs
    ids = reference(STORIES)[0][:40]
    full = m.logits(ids)
    s = m.new_state()
    assert s.position == 0
    last = m.forward(s, ids[:30])
    assert last.shape == (m.vocab_size,) and s.position == 30
    assert np.abs(last - full[29]).max() < INCREMENTAL_VS_FULL_ABS
    c = s.clone()
    rows = [m.forward(s, [int(t)]) for t in ids[30:]]
    rows_c = m.forward(c, ids[30:], logits="all")
    assert rows_c.shape == (10, m.vocab_size)
    for i, r in enumerate(rows):
        assert np.abs(r - full[30 + i]).max() < INCREMENTAL_VS_FULL_ABS
        assert np.abs(rows_c[i] - full[30 + i]).max() < INCREMENTAL_VS_FULL_ABS
    assert m.forward(s, [1], logits="none") is None
    assert s.truncate(5) and s.position == 5  # a KV cache rewinds
    s.reset()
    assert s.position == 0
    with pytest.raises(ValueError, match="another model"):
        hxq.load(STORIES).forward(c, [1])


# ---- generation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["dense", "stories_v2", "mamba_v2"])
def test_greedy_generate_identical_to_cli(which, ckpts):
    path = STORIES if which == "dense" else ckpts[which]
    prompt = "Once upon a time" if "mamba" not in which else "The future of artificial intelligence"
    m = hxq.load(path, threads=2)
    text = m.generate(prompt, max_tokens=48)
    cli = cli_json("generate", "-m", path, "-p", prompt, "-n", 48, "--threads", 2)
    assert text == cli["text"]
    streamed = run_cli("generate", "-m", path, "-p", prompt, "-n", 48, "--threads", 2).stdout
    assert streamed == prompt + text
    r = m.complete(prompt, max_tokens=48)
    assert r["ids"] == cli["ids"] and r["prompt_ids"] == cli["prompt_ids"] and r["text"] == text
    assert r["finish_reason"] == ("stop" if cli["stopped_at_eos"] else "length")
    assert r["completion_tokens"] == len(cli["ids"])


def test_stream_equals_generate_greedy_and_sampled(ckpts):
    m = hxq.load(ckpts["stories_v2"])
    for kw in ({}, {"temperature": 0.9, "top_k": 40, "top_p": 0.95, "seed": 7}, {"temperature": 1.2, "min_p": 0.05, "seed": 3}):
        text = m.generate("Lily had a", max_tokens=60, **kw)
        st = m.stream("Lily had a", max_tokens=60, **kw)
        pieces = list(st)
        assert all(pieces) and "".join(pieces) == text
        assert st.finish_reason in ("stop", "length")
        assert st.stats["completion_tokens"] == len(st.ids)
    cli = cli_json("generate", "-m", ckpts["stories_v2"], "-p", "Lily had a", "-n", 60, "--temperature", 0.9,
                   "--top-k", 40, "--top-p", 0.95, "--seed", 7)
    assert m.generate("Lily had a", max_tokens=60, temperature=0.9, top_k=40, top_p=0.95, seed=7) == cli["text"]


def test_stop_strings_and_token_prompts(ckpts):
    m = hxq.load(ckpts["stories_v2"])
    full = m.generate("Once upon a time", max_tokens=64)
    word = full.split()[3]
    cut = full.index(word)
    r = m.complete("Once upon a time", max_tokens=64, stop=[word, "zzzz"])
    assert r["text"] == full[:cut] and r["finish_reason"] == "stop"
    assert "".join(m.stream("Once upon a time", max_tokens=64, stop=word)) == full[:cut]
    ids = m.tokenizer.encode("Once upon a time")
    if m.tokenizer.add_bos:
        ids = [m.tokenizer.bos_id] + ids
    assert m.generate(ids, max_tokens=64) == full
    assert m.generate("Once upon a time", max_tokens=0) == ""
    assert m.complete("Once upon a time", max_tokens=3)["finish_reason"] == "length"


def test_tokenizer_bit_exact_on_goldens():
    need(os.path.join(MAMBA17M, "tokenizer.json"))
    tok = hxq.load(MAMBA17M).tokenizer
    g = json.load(open(os.path.join(DATA, "data", "tokenizer-goldens", "goldens.json"), encoding="utf-8"))
    strings, want = g["test_strings"], g["gpt-neox-20b"]["strings"]
    assert len(strings) == len(want) > 40
    for text, ids in zip(strings, want):
        assert tok.encode(text) == ids, text
        assert tok.decode(ids) == text
    assert tok.vocab_size >= 50277 and tok.eos_id is not None and len(tok) == tok.vocab_size
    alone = hxq.Tokenizer.load(os.path.join(MAMBA17M, "tokenizer.json"))
    assert alone.encode("Hello world") == tok.encode("Hello world")


# ---- evaluation ---------------------------------------------------------------------------------

def alice_text():
    # the bytes the CLI reads (newline="" keeps the file's CRLF line ends)
    return open(ALICE, encoding="utf-8", newline="").read()


def test_perplexity_and_kl_equal_cli(ckpts):
    need(ALICE)
    args = ("--ctx", 128, "--stride", 64, "--max-tokens", 2000)
    cli = cli_json("perplexity", "-m", ckpts["stories_v2"], "-f", ALICE, *args)
    m = hxq.load(ckpts["stories_v2"])
    seen = []
    r = m.perplexity(alice_text(), ctx=128, stride=64, max_tokens=2000,
                     progress=lambda *a: seen.append(a))
    for k in ("ppl", "ppl_stderr", "nll", "scored_tokens", "tokens", "protocol"):
        assert r[k] == cli[k], k
    assert [list(w) for w in r["windows"]] == cli["windows"]
    assert seen and seen[-1][0] == seen[-1][1] == len(r["windows"])
    base = hxq.load(STORIES)
    k = base.kl(m, alice_text(), ctx=128, stride=64, max_tokens=2000)
    cli = cli_json("kl", "-m", STORIES, "--other", ckpts["stories_v2"], "-f", ALICE, *args)
    for key in ("kl_mean", "kl_p99", "kl_max", "top1_agreement", "ppl_base", "ppl_other", "scored_tokens"):
        assert k[key] == cli[key], key
    ids = m.tokenizer.encode(alice_text())[:600]
    lc = m.perplexity(ids=ids, protocol="llamacpp", ctx=128)
    assert lc["protocol"] == "llamacpp" and lc["scored_tokens"] > 0


# ---- compress / inspect -------------------------------------------------------------------------

def test_compress_equals_cli_and_inspect(tmp_path):
    a, b = tmp_path / "py", tmp_path / "cli"
    calls = []
    receipt = hxq.compress(STORIES, a, bits=6, group=16, progress=lambda d, t, mod: calls.append((d, t, mod)))
    cli = cli_json("compress", STORIES, b, "--bits", 6, "--group", 16)
    for k in ("format", "bits", "group", "input_bytes", "output_bytes", "total_keys", "exact_tensors"):
        assert receipt[k] == cli[k], k
    assert [m["module"] for m in receipt["modules"]] == [m["module"] for m in cli["modules"]]
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert calls and calls[-1][0] == calls[-1][1]
    info = hxq.inspect(a)
    assert info == cli_json("inspect", a)
    assert info["format"] == "hxq_v2" and info["hxq_modules"] == len(receipt["modules"])
    h = hxq.compress(STORIES, tmp_path / "helix", format="helix", codebook_precision="bf16")
    assert h["format"] == "helix"


def test_compress_errors_and_abort(tmp_path):
    with pytest.raises(ValueError, match="bits"):
        hxq.compress(STORIES, tmp_path / "x", bits=7)
    with pytest.raises(hxq.UsageError):
        hxq.compress(STORIES, tmp_path / "x", bits=7)
    with pytest.raises(ValueError, match="helix"):
        hxq.compress(STORIES, tmp_path / "x", codebook="lloyd")
    with pytest.raises(ValueError, match="v2"):
        hxq.compress(STORIES, tmp_path / "x", format="helix", bits=8)
    with pytest.raises(ValueError, match="format"):
        hxq.compress(STORIES, tmp_path / "x", format="gguf")
    with pytest.raises(hxq.Error, match="missing: not a model directory"):
        hxq.compress(tmp_path / "missing", tmp_path / "x")

    def boom(done, total, module):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        hxq.compress(STORIES, tmp_path / "aborted", progress=boom)
    assert not (tmp_path / "aborted").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith("aborted")]
    hxq.compress(STORIES, tmp_path / "once")
    with pytest.raises(hxq.Error, match="exists"):
        hxq.compress(STORIES, tmp_path / "once")


# ---- errors -------------------------------------------------------------------------------------

def test_errors_are_one_line_and_typed(tmp_path, ckpts):
    with pytest.raises(hxq.Error) as e:
        hxq.load(tmp_path / "nothing")
    assert "nothing" in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, RuntimeError) and not isinstance(e.value, ValueError)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(hxq.Error, match="unsupported model_type"):
        hxq.load(bad)
    (bad / "config.json").write_text('{"model_type": ')
    with pytest.raises(hxq.Error, match="config.json"):
        hxq.load(bad)
    m = hxq.load(ckpts["stories_v2"])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.logits([1, 2, 100000])
    with pytest.raises(ValueError, match="empty"):
        m.logits([])
    with pytest.raises(TypeError):
        m.logits("Once upon")
    with pytest.raises(TypeError):
        m.logits([1, 2.5])
    with pytest.raises(ValueError, match="1-D"):
        m.logits(np.ones((2, 3), dtype=np.int32))
    with pytest.raises(TypeError):
        m.logits(np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError, match="out of range"):
        m.logits([2**40])
    with pytest.raises(ValueError, match="max_tokens"):
        m.generate("x", max_tokens=-1)
    with pytest.raises(ValueError):
        m.generate("x", temperature=-1.0)
    with pytest.raises(TypeError, match="stop"):
        m.generate("x", stop=[1, 2])
    with pytest.raises(ValueError, match="logits"):
        m.forward(m.new_state(), [1], logits="some")
    with pytest.raises(ValueError, match="exactly one"):
        m.perplexity()
    with pytest.raises(ValueError, match="stride"):
        m.perplexity(ids=list(range(1, 100)), ctx=16, stride=32)
    with pytest.raises(hxq.Error, match="context"):
        m.logits([1] * 600)  # stories260K: max_position_embeddings 512
    with pytest.raises(hxq.Error, match="tokenizer"):
        hxq.load(os.path.join(FIXTURES, "llama-tiny")).tokenizer


# ---- threads, GIL, Ctrl-C -----------------------------------------------------------------------

def test_threads_give_identical_numbers(ckpts):
    ids = reference(STORIES)[0]
    a = hxq.load(ckpts["stories_v2"], threads=1).logits(ids)
    assert hxq.get_num_threads() == 1
    b = hxq.load(ckpts["stories_v2"], threads=2).logits(ids)
    assert hxq.get_num_threads() == 2
    assert np.array_equal(a, b)


def test_concurrent_calls_on_one_model(ckpts):
    m = hxq.load(ckpts["mamba_v2"])
    want = m.generate("The history of", max_tokens=24)
    out = [None] * 4

    def work(i):
        out[i] = m.generate("The history of", max_tokens=24)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert out == [want] * 4


def test_gil_released_while_generating(ckpts):
    m = hxq.load(ckpts["mamba_v2"])
    ticks = []
    done = threading.Event()

    def ticker():
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    t = threading.Thread(target=ticker)
    t.start()
    t0 = time.perf_counter()
    m.generate("The history of", max_tokens=48)
    t1 = time.perf_counter()
    done.set()
    t.join()
    during = [x for x in ticks if t0 < x < t1]
    # a ticker starved by a held GIL would get ~1 tick per 5 ms switch interval at best
    assert len(during) >= 0.3 * (t1 - t0) / 0.002


def _interrupt_after(seconds):
    timer = threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    return timer


def test_ctrl_c_interrupts_generate_and_perplexity(ckpts):
    m = hxq.load(ckpts["mamba_v2"])
    t0 = time.perf_counter()
    _interrupt_after(0.5)
    with pytest.raises(KeyboardInterrupt):
        m.generate("The history of", max_tokens=1_000_000)
    assert time.perf_counter() - t0 < 30
    need(WIKI)
    text = open(WIKI, encoding="utf-8").read()[:400_000]
    _interrupt_after(1.0)
    with pytest.raises(KeyboardInterrupt):
        m.perplexity(text, ctx=256, stride=128)
    # the model is still usable afterwards
    assert m.generate("The history of", max_tokens=4)
