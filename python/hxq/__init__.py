"""hxq: calibration-free codebook compression of language models, run from the compressed form.

The same C++ engine as the ``hxq`` command line (no second implementation): load a Hugging Face
checkpoint (dense or HXQ-compressed), generate, stream, score, compress.

    >>> import hxq
    >>> m = hxq.load("stories260K-hxq")
    >>> m.generate("Once upon a time", max_tokens=16)
    >>> for piece in m.stream("Once upon a time", max_tokens=16): print(piece, end="")
    >>> m.logits(m.tokenizer.encode("Hello"))          # numpy float32 [T, vocab]

PyTorch layers (frozen compressed weights, LoRA on top) are in :mod:`hxq.torch`.

Errors raised by the engine are :class:`hxq.Error` with the CLI's one-line messages (bad
arguments: :class:`hxq.UsageError`, also a ``ValueError``); wrong argument types raise
``TypeError``. The engine runs with the GIL released; Ctrl-C interrupts long calls between tokens
(generation), windows (perplexity, kl) or tensors (compress).
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

from . import _hxq
from ._hxq import (  # noqa: F401  (re-exported)
    Checkpoint,
    CompressedLinear,
    Error,
    Model,
    State,
    Stream,
    Tokenizer,
    UsageError,
    get_num_threads,
    set_num_threads,
    supported_model_types,
)

__version__ = "0.1.0"
__all__ = [
    "Checkpoint", "CompressedLinear", "Error", "Model", "State", "Stream", "Tokenizer", "UsageError",
    "compress", "get_num_threads", "inspect", "load", "load_safetensors", "save_safetensors",
    "set_num_threads", "supported_model_types",
]

PathLike = Union[str, "os.PathLike[str]"]


def load(path: PathLike, threads: Optional[int] = None, exact: bool = False,
         lora: Optional[PathLike] = None) -> Model:
    """Loads a checkpoint directory (config.json + safetensors, dense or HXQ) for inference.

    threads: size of the engine's process-wide thread pool (default: leave it, all cores at
    start); exact: exact float32 codebook math in the decode kernels (the CLI's --exact);
    lora: a PEFT adapter directory applied without merging (the CLI's --lora).
    """
    return _hxq.load(os.fspath(path), threads, exact, None if lora is None else os.fspath(lora))


def compress(src: PathLike, dst: PathLike, *, format: str = "v2", bits: Optional[int] = None,
             group: Optional[int] = None, bpw: Optional[float] = None, codebook: Optional[str] = None,
             codebook_precision: Optional[str] = None, sidecar: Optional[str] = None,
             sidecar_fraction: Optional[float] = None, embeddings: bool = False,
             only: Sequence[str] = (), skip: Sequence[str] = (), shard_gb: float = 4.0,
             overwrite: bool = False, fsync: bool = True, merge_lora: Optional[PathLike] = None,
             threads: Optional[int] = None,
             progress: Optional[Callable[[int, int, str], None]] = None) -> dict:
    """Compresses a checkpoint's linear layers (``hxq compress`` as a function); returns the receipt.

    The options are the CLI's: format "v2" (bits 8/6/5/4, group 32/16, or a bpw budget) or
    "helix" (codebook, codebook_precision, sidecar); sidecar_fraction, embeddings, only/skip glob
    patterns, shard_gb, overwrite, fsync, merge_lora (a PEFT adapter merged into the dense weights
    first). progress(bytes_done, bytes_total, module) is called as tensors are processed; an
    exception it raises (or Ctrl-C) aborts the run and leaves nothing at dst.
    """
    return _hxq.compress(os.fspath(src), os.fspath(dst), format=format, bits=bits, group=group, bpw=bpw,
                         codebook=codebook, codebook_precision=codebook_precision, sidecar=sidecar,
                         sidecar_fraction=sidecar_fraction, embeddings=embeddings, only=list(only),
                         skip=list(skip), shard_gb=shard_gb, overwrite=overwrite, fsync=fsync,
                         merge_lora=None if merge_lora is None else os.fspath(merge_lora), threads=threads,
                         progress=progress)


def inspect(path: PathLike) -> dict:
    """Summary of a checkpoint (the keys of ``hxq inspect --json``)."""
    return _hxq.inspect(os.fspath(path))


def load_safetensors(path: PathLike) -> "Dict[str, numpy.ndarray]":  # noqa: F821
    """Every tensor of a .safetensors file or checkpoint directory as numpy arrays (copies;
    BF16 is widened to float32 exactly, since numpy has no bfloat16)."""
    ck = Checkpoint(os.fspath(path))
    return {n: ck.tensor(n) for n in ck.names()}


def save_safetensors(path: PathLike, tensors: "Dict[str, numpy.ndarray]",  # noqa: F821
                     metadata: Optional[Dict[str, str]] = None) -> None:
    """Writes numpy arrays (float32, float16, int64, int32, uint8, uint16) to a .safetensors file
    with the engine's writer (the reference library's layout; the file is removed on error)."""
    _hxq.save_safetensors(os.fspath(path), tensors, metadata)
