"""PyTorch layers on hxq's compressed weights: frozen HXQ linears and LoRA adapters on top.

* :class:`HxqLinear` holds a compressed module's stored tensors (codebook, indices, scales,
  sidecar; never a dense weight) as buffers and runs forward and the input gradient through the
  engine's CPU kernels. The compressed weight gets no gradient (it is frozen, as in
  helix-substrate's HelixLinearSTE); a bias, when present, is an ordinary (frozen) parameter.
* :func:`replace_linear` swaps a model's ``nn.Linear`` layers for :class:`HxqLinear` where a
  checkpoint stores them compressed (any PyTorch model whose module names are the checkpoint's
  tensor names, e.g. a transformers model: ``replace_linear(model, "ckpt-hxq")``).
* :func:`add_lora`, :func:`save_lora`, :func:`load_lora`: LoRA adapters trained on top of frozen
  layers, saved in PEFT's format (``adapter_config.json`` + ``adapter_model.safetensors``), which
  the engine applies at inference (``hxq.load(path, lora=dir)``, ``hxq generate --lora dir``).

CPU tensors only (the engine's kernels run on the CPU); inputs of any float dtype are computed in
float32 and returned in their own dtype.
"""
from __future__ import annotations

import json
import math
import os
import re
from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from . import _hxq

__all__ = ["HxqLinear", "LoraLinear", "replace_linear", "add_lora", "save_lora", "load_lora", "lora_state_dict"]

# The stored tensors of a compressed module (docs/FORMAT.md), by suffix.
_STORED = _hxq.MODULE_TENSORS


class _HxqLinearFunction(torch.autograd.Function):
    """y = x · Wᵀ through the engine; dL/dx = dL/dy · W (the transposed HXQ product)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, engine: "_hxq.CompressedLinear") -> torch.Tensor:  # type: ignore[override]
        ctx.engine = engine
        out = torch.empty((x.shape[0], engine.out_features), dtype=torch.float32)
        engine.forward(x.detach().numpy(), out.numpy())
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None
        g = grad_out.detach().to(torch.float32).contiguous()
        dx = torch.empty((g.shape[0], ctx.engine.in_features), dtype=torch.float32)
        ctx.engine.grad_input(g.numpy(), dx.numpy())
        return dx, None


class HxqLinear(nn.Module):
    """A linear layer computed from its compressed storage (HXQ helix or v2), frozen.

    Build it with :meth:`from_checkpoint` (or :func:`replace_linear`). The stored tensors are
    buffers (they follow ``state_dict`` / ``load_state_dict``); the engine's view of them is
    rebuilt whenever a buffer is replaced or modified in place.
    """

    def __init__(self, tensors: Dict[str, np.ndarray], in_features: int, out_features: int,
                 bias: Optional[torch.Tensor] = None, exact: bool = True) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.exact = bool(exact)
        self._names: List[str] = []
        for k in _STORED:
            if k in tensors:
                self.register_buffer(k, torch.from_numpy(np.ascontiguousarray(tensors[k])))
                self._names.append(k)
        if bias is None and "bias" in tensors:
            bias = torch.from_numpy(np.asarray(tensors["bias"], dtype=np.float32))
        if bias is not None:
            bias = torch.as_tensor(bias, dtype=torch.float32).detach().clone()
            if bias.shape != (self.out_features,):
                raise ValueError(f"bias: shape {tuple(bias.shape)} for {self.out_features} outputs")
            self.bias: Optional[nn.Parameter] = nn.Parameter(bias, requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self._engine: Optional[_hxq.CompressedLinear] = None
        self._key: tuple = ()
        self._get_engine()  # validates the tensors now (hxq.Error naming the problem)

    @classmethod
    def from_checkpoint(cls, checkpoint: Union[str, "os.PathLike[str]", _hxq.Checkpoint], module: str,
                        exact: bool = True) -> "HxqLinear":
        """Module `module` (tensor name minus ``.weight``) of an HXQ checkpoint directory."""
        ck = checkpoint if isinstance(checkpoint, _hxq.Checkpoint) else _hxq.Checkpoint(os.fspath(checkpoint))
        t = ck.module(module)
        probe = _hxq.CompressedLinear({k: v for k, v in t.items() if k != "bias"}, -1, -1, exact)
        return cls(t, probe.in_features, probe.out_features, exact=exact)

    def _apply(self, fn, *args, **kwargs):
        # model.half() / .to(dtype) must not re-encode the stored tensors (float32 codebooks and
        # scales are part of the format): they keep their dtype; the bias follows the module.
        before = {k: getattr(self, k) for k in self._names}
        out = super()._apply(fn, *args, **kwargs)
        for k, old in before.items():
            new = getattr(self, k)
            if new.dtype != old.dtype:
                self._buffers[k] = old.to(device=new.device)
        return out

    def __getstate__(self):
        # pickling / copy.deepcopy: the engine handle is rebuilt from the buffers on first use
        state = self.__dict__.copy()
        state["_engine"], state["_key"] = None, ()
        return state

    def _stored(self) -> Dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in self._names}

    def _get_engine(self) -> "_hxq.CompressedLinear":
        stored = self._stored()
        key = tuple((k, t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for k, t in stored.items())
        if self._engine is None or key != self._key:
            arrays = {}
            for k, t in stored.items():
                if t.device.type != "cpu":
                    raise RuntimeError(f"HxqLinear: buffer '{k}' is on {t.device}; the engine runs on the CPU")
                arrays[k] = t.detach().contiguous().numpy()
            self._engine = _hxq.CompressedLinear(arrays, self.out_features, self.in_features, self.exact)
            self._key = key
        return self._engine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise RuntimeError(f"HxqLinear: input on {x.device}; the engine runs on CPU tensors")
        if not x.is_floating_point():
            raise TypeError(f"HxqLinear: expected a floating-point input, got {x.dtype}")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"HxqLinear: input has {x.shape[-1]} features, the layer takes {self.in_features}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(torch.float32).contiguous()
        y = _HxqLinearFunction.apply(x2, self._get_engine())
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features).to(x.dtype)

    @torch.no_grad()
    def dequantize(self) -> torch.Tensor:
        """The decoded weight [out, in] as float32 (a dense copy: for tests and export only)."""
        return torch.from_numpy(self._get_engine().decode())

    @property
    def kind(self) -> str:
        return self._get_engine().kind

    @property
    def bits(self) -> int:
        return self._get_engine().bits

    def extra_repr(self) -> str:
        e = self._get_engine()
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"format={e.kind}, bits={e.bits}, stored_bytes={e.nbytes}")


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def replace_linear(module: nn.Module, checkpoint: Union[str, "os.PathLike[str]", _hxq.Checkpoint], *,
                   prefix: str = "", exact: bool = True, strict: bool = False) -> List[str]:
    """Replaces every ``nn.Linear`` of `module` whose name (``prefix + name``) is compressed in the
    HXQ checkpoint by an :class:`HxqLinear` holding the stored tensors; returns the replaced names.

    The stored shapes must match the layers' (``ValueError`` otherwise). A layer's bias is taken
    from the checkpoint when stored there, else kept from the replaced layer. strict: raise
    ``ValueError`` when a compressed module of the checkpoint matches no ``nn.Linear`` (e.g. a
    compressed embedding, which stays as it is).
    """
    ck = checkpoint if isinstance(checkpoint, _hxq.Checkpoint) else _hxq.Checkpoint(os.fspath(checkpoint))
    compressed = set(ck.compressed_modules)
    if not compressed:
        raise ValueError(f"{ck.path}: not an HXQ checkpoint (no quantization_config.compressed_modules)")
    replaced = []
    for name, child in list(module.named_modules()):
        full = prefix + name
        if not isinstance(child, nn.Linear) or full not in compressed:
            continue
        t = ck.module(full)
        stored_bias = t.pop("bias", None)
        bias = None
        if stored_bias is not None:
            bias = torch.from_numpy(stored_bias)
        elif child.bias is not None:
            bias = child.bias.detach().to(torch.float32)
        new = HxqLinear(t, child.in_features, child.out_features, bias=bias, exact=exact)
        _set_submodule(module, name, new)
        replaced.append(name)
    if strict:
        missing = sorted(compressed - {prefix + n for n in replaced})
        if missing:
            raise ValueError(f"{ck.path}: {len(missing)} compressed module(s) match no nn.Linear: "
                             + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    return replaced


class LoraLinear(nn.Module):
    """y = base(x) + scaling · B(A(dropout(x))), base frozen; PEFT's LoRA for a Linear layer.

    ``lora_A`` [r, in] starts Kaiming-uniform and ``lora_B`` [out, r] at zero (PEFT's default
    init), so a fresh adapter leaves the output unchanged. scaling = alpha / r, or alpha / sqrt(r)
    with use_rslora.
    """

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False) -> None:
        super().__init__()
        if r < 1:
            raise ValueError(f"r: {r} must be at least 1")
        self.base_layer = base
        self.in_features = int(base.in_features)
        self.out_features = int(base.out_features)
        self.r = int(r)
        self.lora_alpha = float(alpha)
        self.use_rslora = bool(use_rslora)
        self.scaling = self.lora_alpha / (math.sqrt(self.r) if use_rslora else self.r)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(self.in_features, self.r, bias=False)
        self.lora_B = nn.Linear(self.r, self.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        for p in self.base_layer.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = self.lora_A.weight.dtype
        delta = self.lora_B(self.lora_A(self.lora_dropout(x.to(dt)))) * self.scaling
        return self.base_layer(x) + delta.to(x.dtype)

    def extra_repr(self) -> str:
        return f"r={self.r}, lora_alpha={self.lora_alpha:g}, scaling={self.scaling:g}"


def _matches(name: str, target: Union[str, Sequence[str]]) -> bool:
    # PEFT's rule: a string is a regex matched against the whole name; a list matches a name equal
    # to an entry or ending in "." + entry.
    if isinstance(target, str):
        return re.fullmatch(target, name) is not None
    return any(name == t or name.endswith("." + t) for t in target)


def add_lora(module: nn.Module, r: int = 8, alpha: float = 16, target: Union[str, Sequence[str]] = ("q_proj", "v_proj"),
             dropout: float = 0.0, use_rslora: bool = False, *, freeze: bool = True) -> List[str]:
    """Wraps the ``nn.Linear`` / :class:`HxqLinear` layers of `module` whose names match `target`
    (PEFT's target_modules: names or name suffixes, or one regex) in :class:`LoraLinear`; returns
    their names. freeze: every other parameter of `module` stops requiring gradients (PEFT's
    behaviour), so only the adapters train."""
    if freeze:
        for p in module.parameters():
            p.requires_grad_(False)
    wrapped = []
    for name, child in list(module.named_modules()):
        if not name or not isinstance(child, (nn.Linear, HxqLinear)) or not _matches(name, target):
            continue
        _set_submodule(module, name, LoraLinear(child, r, alpha, dropout, use_rslora))
        wrapped.append(name)
    if not wrapped:
        raise ValueError(f"add_lora: no Linear layer matches target {target!r}")
    module._hxq_lora_config = {  # type: ignore[attr-defined]
        "r": int(r), "lora_alpha": float(alpha), "lora_dropout": float(dropout), "use_rslora": bool(use_rslora),
        "target_modules": target if isinstance(target, str) else sorted(set(target)),
    }
    return wrapped


def _lora_layers(module: nn.Module) -> Dict[str, LoraLinear]:
    return {n: m for n, m in module.named_modules() if isinstance(m, LoraLinear)}


def lora_state_dict(module: nn.Module) -> Dict[str, torch.Tensor]:
    """The adapters' tensors under PEFT's saved names:
    ``base_model.model.<module>.lora_A.weight`` [r, in] and ``.lora_B.weight`` [out, r]."""
    out = {}
    for name, m in _lora_layers(module).items():
        out[f"base_model.model.{name}.lora_A.weight"] = m.lora_A.weight.detach()
        out[f"base_model.model.{name}.lora_B.weight"] = m.lora_B.weight.detach()
    return out


def save_lora(module: nn.Module, directory: Union[str, "os.PathLike[str]"],
              base_model_name_or_path: Optional[str] = None) -> None:
    """Writes the adapters of `module` in PEFT's format: ``adapter_config.json`` and
    ``adapter_model.safetensors`` (float32), loadable by PEFT and by ``hxq ... --lora``."""
    layers = _lora_layers(module)
    if not layers:
        raise ValueError("save_lora: the module has no LoRA layers (add_lora first)")
    ranks = {m.r for m in layers.values()}
    alphas = {m.lora_alpha for m in layers.values()}
    rs = {m.use_rslora for m in layers.values()}
    if len(ranks) != 1 or len(alphas) != 1 or len(rs) != 1:
        raise ValueError("save_lora: layers with different r / alpha / use_rslora are not supported")
    cfg = getattr(module, "_hxq_lora_config", {})
    target = cfg.get("target_modules") or sorted({n.rsplit(".", 1)[-1] for n in layers})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": ranks.pop(),
        "lora_alpha": alphas.pop(),
        "lora_dropout": cfg.get("lora_dropout", 0.0),
        "use_rslora": rs.pop(),
        "target_modules": target,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": False,
    }
    os.makedirs(directory, exist_ok=True)
    tensors = {k: v.to(torch.float32).contiguous().numpy() for k, v in lora_state_dict(module).items()}
    _hxq.save_safetensors(os.path.join(directory, "adapter_model.safetensors"), tensors, {"format": "pt"})
    tmp = os.path.join(directory, "adapter_config.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    os.replace(tmp, os.path.join(directory, "adapter_config.json"))


def load_lora(module: nn.Module, directory: Union[str, "os.PathLike[str]"], *, freeze: bool = True) -> List[str]:
    """Adds the adapters of a PEFT directory to `module` (as :func:`add_lora` with its config) and
    loads their weights; returns the wrapped layer names. Every adapter tensor must find its
    layer and shape (``ValueError`` otherwise)."""
    with open(os.path.join(directory, "adapter_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{directory}: peft_type {cfg.get('peft_type')!r} is not LORA")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ValueError(f"{directory}: rank_pattern / alpha_pattern are not supported by load_lora")
    ck = _hxq.Checkpoint(os.path.join(os.fspath(directory), "adapter_model.safetensors"))
    names = set()
    for t in ck.names():
        m = re.fullmatch(r"base_model\.model\.(.+)\.lora_[AB]\.weight", t)
        if not m:
            raise ValueError(f"{directory}: unexpected tensor '{t}' in adapter_model.safetensors")
        names.add(m.group(1))
    wrapped = add_lora(module, r=int(cfg["r"]), alpha=float(cfg["lora_alpha"]), target=sorted(names),
                       dropout=float(cfg.get("lora_dropout", 0.0) or 0.0), use_rslora=bool(cfg.get("use_rslora", False)),
                       freeze=freeze)
    layers = _lora_layers(module)
    missing = names - set(layers)
    if missing:
        raise ValueError(f"{directory}: adapter modules not in the model: {', '.join(sorted(missing))}")
    with torch.no_grad():
        for n in names:
            layer = layers[n]
            for part, w in (("lora_A", layer.lora_A.weight), ("lora_B", layer.lora_B.weight)):
                src = torch.from_numpy(ck.tensor(f"base_model.model.{n}.{part}.weight"))
                if tuple(src.shape) != tuple(w.shape):
                    raise ValueError(f"{directory}: {n}.{part}: shape {tuple(src.shape)}, the layer needs {tuple(w.shape)}")
                w.copy_(src)
    return wrapped
