"""Fixtures for the Python package tests (scripts/python-test.sh installs the package first).

Environment: HXQ_BIN (the hxq binary whose numbers the package must reproduce), HXQ_TEST_DATA
(default ../shared). Compressed checkpoints are made once per session with hxq.compress.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import hxq

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HXQ = os.environ.get("HXQ_BIN", os.path.join(ROOT, "build", "hxq"))
DATA = os.environ.get("HXQ_TEST_DATA", os.path.join(os.path.dirname(ROOT), "shared"))
STORIES = os.path.join(DATA, "models", "stories260K-hf")
MAMBA17M = os.path.join(DATA, "models", "mamba2-neox-17m")
FIXTURES = os.path.join(DATA, "fixtures", "hf")
ALICE = os.path.join(DATA, "data", "corpora", "gutenberg", "pg11.txt")
WIKI = os.path.join(DATA, "data", "wikitext-2-raw", "wiki.test.raw")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def need(*paths):
    for p in paths:
        if not os.path.exists(p):
            pytest.skip(f"test data {p} not found")


def run_cli(*args, check=True):
    """Runs the hxq binary; returns CompletedProcess (text)."""
    p = subprocess.run([HXQ, *map(str, args)], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"hxq {' '.join(map(str, args))} failed ({p.returncode}): {p.stderr}")
    return p


def cli_json(*args):
    return json.loads(run_cli(*args, "--json").stdout)


def cli_logits(model, ids, tmp_path, *extra):
    ids_file = tmp_path / "ids.i32"
    np.asarray(ids, dtype="<i4").tofile(ids_file)
    out = tmp_path / "logits.f32"
    run_cli("logits", "-m", model, "--ids-file", ids_file, "--out", out, "--threads", "2", *extra)
    return np.fromfile(out, dtype="<f4").reshape(len(ids), -1)


@pytest.fixture(autouse=True)
def _test_data():
    """Every test here runs on the models of ../shared: skipped, with the path, when it is absent."""
    need(STORIES)


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory):
    """Compressed copies of the small models, made once: stories260K (v2 8-bit, v2 4-bit, helix),
    mamba2-17m (v2 8-bit), llama-tiny (v2 8-bit)."""
    need(STORIES, MAMBA17M)
    d = tmp_path_factory.mktemp("ckpts")
    out = {}
    out["stories_v2"] = d / "stories-v2"
    hxq.compress(STORIES, out["stories_v2"], fsync=False)
    out["stories_v2_4"] = d / "stories-v2-4"
    hxq.compress(STORIES, out["stories_v2_4"], bits=4, group=16, fsync=False)
    out["stories_helix"] = d / "stories-helix"
    hxq.compress(STORIES, out["stories_helix"], format="helix", fsync=False)
    out["mamba_v2"] = d / "mamba-v2"
    hxq.compress(MAMBA17M, out["mamba_v2"], fsync=False)
    llama = os.path.join(FIXTURES, "llama-tiny")
    if os.path.exists(llama):
        out["llama_v2"] = d / "llama-v2"
        hxq.compress(llama, out["llama_v2"], fsync=False)
    return {k: str(v) for k, v in out.items()}


def reference(model_dir):
    """input_ids and transformers' logits of a fixture or model (its reference.safetensors)."""
    path = os.path.join(model_dir, "reference.safetensors")
    need(path)
    r = hxq.Checkpoint(path)
    return r.tensor("input_ids").reshape(-1), r.tensor("logits")[0]
