"""A plain PyTorch Llama / Qwen2 (transformers' LlamaForCausalLM / Qwen2ForCausalLM equations, module
names and weight names) for the tests: transformers itself is not installable here, so this model
stands in for "a transformers model" in replace_linear / LoRA tests. It is checked against
transformers' own logits (fixtures/hf/*/reference.safetensors) in test_torch.py.
"""
import math

import torch
from torch import nn

import hxq


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        x32 = x.to(torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.h, self.kvh, self.hd = c["heads"], c["kv_heads"], c["head_dim"]
        bias = c["qkv_bias"]
        self.q_proj = nn.Linear(c["hidden"], self.h * self.hd, bias=bias)
        self.k_proj = nn.Linear(c["hidden"], self.kvh * self.hd, bias=bias)
        self.v_proj = nn.Linear(c["hidden"], self.kvh * self.hd, bias=bias)
        self.o_proj = nn.Linear(self.h * self.hd, c["hidden"], bias=c["o_bias"])

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.h, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.kvh, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.kvh, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.h // self.kvh
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd)
        mask = torch.full((T, T), float("-inf")).triu(1)
        p = torch.softmax(s + mask, dim=-1)
        o = (p @ v).transpose(1, 2).reshape(B, T, self.h * self.hd)
        return self.o_proj(o)


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate_proj = nn.Linear(c["hidden"], c["intermediate"], bias=c["mlp_bias"])
        self.up_proj = nn.Linear(c["hidden"], c["intermediate"], bias=c["mlp_bias"])
        self.down_proj = nn.Linear(c["intermediate"], c["hidden"], bias=c["mlp_bias"])

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c["hidden"], c["eps"])
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c["hidden"], c["eps"])
        self.mlp = MLP(c)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Inner(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c["vocab"], c["hidden"])
        self.layers = nn.ModuleList(Layer(c) for _ in range(c["layers"]))
        self.norm = RMSNorm(c["hidden"], c["eps"])


class CausalLM(nn.Module):
    """model.embed_tokens, model.layers.N.{self_attn,mlp}.*, model.norm, lm_head (tied or not)."""

    def __init__(self, config):
        super().__init__()
        arch = config["model_type"]
        rope = config.get("rope_parameters") or {}
        self.c = c = {
            "hidden": config["hidden_size"], "intermediate": config["intermediate_size"],
            "layers": config["num_hidden_layers"], "heads": config["num_attention_heads"],
            "kv_heads": config.get("num_key_value_heads", config["num_attention_heads"]),
            "vocab": config["vocab_size"], "eps": config.get("rms_norm_eps", 1e-6),
            "theta": rope.get("rope_theta", config.get("rope_theta", 10000.0)),
            "qkv_bias": arch == "qwen2" or bool(config.get("attention_bias", False)),
            "o_bias": arch != "qwen2" and bool(config.get("attention_bias", False)),
            "mlp_bias": bool(config.get("mlp_bias", False)),
            "tie": bool(config.get("tie_word_embeddings", arch == "qwen2")),
        }
        c["head_dim"] = config.get("head_dim") or c["hidden"] // c["heads"]
        self.model = Inner(c)
        self.lm_head = nn.Linear(c["hidden"], c["vocab"], bias=False)
        if c["tie"]:
            self.lm_head.weight = self.model.embed_tokens.weight

    @classmethod
    def from_pretrained(cls, path):
        ck = hxq.Checkpoint(str(path))
        m = cls(ck.config)
        sd = {n: torch.from_numpy(ck.tensor(n)) for n in ck.names()}
        missing, unexpected = m.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not (k == "lm_head.weight" and m.c["tie"])]
        if missing or unexpected:
            raise ValueError(f"{path}: missing {missing}, unexpected {unexpected}")
        return m

    def forward(self, ids):
        if ids.dim() == 1:
            ids = ids[None]
        T = ids.shape[1]
        hd = self.c["head_dim"]
        inv = 1.0 / (self.c["theta"] ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
        freqs = torch.outer(torch.arange(T).float(), inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.model.norm(x))
