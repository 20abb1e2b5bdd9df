"""hxq.torch: HxqLinear (forward and input gradient through the engine), replace_linear on a PyTorch
Llama, LoRA training on frozen compressed layers, PEFT save / load, and the engine applying the
saved adapter (hxq.load(lora=...), hxq logits --lora, hxq.compress(merge_lora=...))."""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import hxq  # noqa: E402
from hxq.torch import HxqLinear, LoraLinear, add_lora, load_lora, lora_state_dict, replace_linear, save_lora  # noqa: E402
from conftest import ALICE, FIXTURES, STORIES, cli_logits, need, reference  # noqa: E402
from tolerances import GRAD_INPUT_REL, TORCH_VS_ENGINE_ABS, TORCH_VS_TRANSFORMERS_ABS  # noqa: E402
from torch_llama import CausalLM  # noqa: E402

torch.manual_seed(0)


def torch_logits(model, ids):
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(ids), dtype=torch.long))[0].numpy()


@pytest.mark.parametrize("name", ["llama-tiny", "qwen2-tiny", "stories"])
def test_torch_llama_matches_transformers(name):
    path = STORIES if name == "stories" else os.path.join(FIXTURES, name)
    ids, ref = reference(path)
    got = torch_logits(CausalLM.from_pretrained(path), ids)
    assert np.abs(got - ref).max() < TORCH_VS_TRANSFORMERS_ABS


@pytest.mark.parametrize("which", ["stories_v2", "stories_v2_4", "stories_helix"])
def test_replace_linear_gives_the_engines_logits(which, ckpts):
    model = CausalLM.from_pretrained(STORIES)
    names = replace_linear(model, ckpts[which])
    assert sorted(names) == sorted(hxq.Checkpoint(ckpts[which]).compressed_modules)
    left = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert left == ["lm_head"]  # tied to the (dense) embedding
    assert all(isinstance(model.get_submodule(n), HxqLinear) for n in names)
    ids = reference(STORIES)[0]
    got = torch_logits(model, ids)
    want = hxq.load(ckpts[which], exact=True).logits(ids)
    assert np.abs(got - want).max() < TORCH_VS_ENGINE_ABS


def test_replace_linear_checks(ckpts, tmp_path):
    model = CausalLM.from_pretrained(STORIES)
    with pytest.raises(ValueError, match="not an HXQ checkpoint"):
        replace_linear(model, STORIES)
    with pytest.raises(ValueError, match="match no nn.Linear"):
        replace_linear(model.model, ckpts["stories_v2"], strict=True)  # names lack the "model." prefix
    assert len(replace_linear(model.model, ckpts["stories_v2"], prefix="model.")) == 35


@pytest.mark.parametrize("which", ["stories_v2", "stories_v2_4", "stories_helix"])
def test_hxq_linear_gradient_is_the_dense_decoded_one(which, ckpts):
    layer = HxqLinear.from_checkpoint(ckpts[which], "model.layers.1.mlp.down_proj")  # 64 x 172
    assert (layer.in_features, layer.out_features) == (172, 64)
    W = layer.dequantize().double()
    x = torch.randn(7, 172, dtype=torch.float64, requires_grad=True)
    # y is linear in x, so finite differences are exact up to float32 rounding of y (~1e-7 |y| / eps)
    assert torch.autograd.gradcheck(lambda t: layer(t), (x,), eps=1e-2, atol=1e-4, rtol=1e-3)
    xf = x.detach().float().requires_grad_(True)
    g = torch.randn(7, 64)
    layer(xf).backward(g)
    want = g.double() @ W
    assert ((xf.grad.double() - want).abs().max() / want.abs().max()).item() < GRAD_INPUT_REL
    y = layer(x.detach().float())
    assert (y.double() - x.detach() @ W.T).abs().max().item() < 1e-4
    # nothing of the compressed weight takes a gradient
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == []
    assert set(dict(layer.named_buffers())) >= {"codebook"}


def test_hxq_linear_shapes_dtypes_and_state_dict(ckpts):
    layer = HxqLinear.from_checkpoint(ckpts["stories_v2"], "model.layers.0.mlp.down_proj")
    x = torch.randn(2, 3, 172)
    y = layer(x)
    assert y.shape == (2, 3, 64) and y.dtype == torch.float32
    assert torch.equal(y.reshape(6, 64), layer(x.reshape(6, 172)))
    xt = torch.randn(172, 6).t()  # non-contiguous
    assert not xt.is_contiguous() and torch.equal(layer(xt), layer(xt.contiguous()))
    yb = layer(x.to(torch.bfloat16))
    assert yb.dtype == torch.bfloat16
    assert (yb.float() - layer(x.to(torch.bfloat16).float())).abs().max() < 0.05
    assert layer(torch.empty(0, 172)).shape == (0, 64)
    with pytest.raises(ValueError, match="172"):
        layer(torch.randn(3, 64))
    with pytest.raises(TypeError):
        layer(torch.ones(3, 172, dtype=torch.int64))
    other = HxqLinear.from_checkpoint(ckpts["stories_v2"], "model.layers.4.mlp.down_proj")
    assert not torch.equal(other(x), y)
    other.load_state_dict(layer.state_dict())
    assert torch.equal(other(x), y)  # the engine follows the new buffers
    with torch.no_grad():
        other.codebook.mul_(2.0)  # in place: the engine must see it
    assert torch.allclose(other(x), 2 * y, rtol=1e-5, atol=1e-5)
    assert "format=v2" in repr(layer) and "bits=8" in repr(layer)
    import copy
    import io
    twin = copy.deepcopy(layer)
    assert torch.equal(twin(x), y)
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf)(x), y)
    half = copy.deepcopy(layer).to(torch.bfloat16)  # the stored tensors keep their dtypes
    assert half.codebook.dtype == torch.float32 and half.packed_indices.dtype == torch.uint8
    assert torch.equal(half(x), y)


def _alice_batch(tok, n_seq=4, T=64):
    need(ALICE)
    ids = tok.encode(open(ALICE, encoding="utf-8").read()[:20000])
    return torch.tensor([ids[i * T:(i + 1) * T + 1] for i in range(n_seq)], dtype=torch.long)


def _loss(model, batch):
    logits = model(batch[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


@pytest.fixture(scope="module")
def trained(ckpts, tmp_path_factory):
    """stories260K on 4-bit HXQ layers + LoRA r=4 on every projection, 12 AdamW steps on Alice."""
    model = CausalLM.from_pretrained(STORIES)
    replace_linear(model, ckpts["stories_v2_4"])
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    wrapped = add_lora(model, r=4, alpha=8, target=targets)
    assert len(wrapped) == 35
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    batch = _alice_batch(hxq.Tokenizer.load(STORIES))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = _loss(model, batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    adapter = tmp_path_factory.mktemp("adapter") / "alice"
    save_lora(model, adapter, base_model_name_or_path="stories260K")
    return model, adapter, losses, batch


def test_lora_training_lowers_the_loss(trained):
    model, _, losses, batch = trained
    with torch.no_grad():
        final = _loss(model, batch).item()
    assert final < 0.9 * losses[0], losses


def test_saved_adapter_is_peft_format(trained):
    _, adapter, _, _ = trained
    cfg = json.load(open(adapter / "adapter_config.json"))
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8 and not cfg["use_rslora"]
    ck = hxq.Checkpoint(str(adapter / "adapter_model.safetensors"))
    assert len(ck) == 70
    assert ck.shape("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight") == [4, 64]
    assert ck.shape("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight") == [64, 4]


def test_engine_applies_the_saved_adapter(trained, ckpts, tmp_path):
    model, adapter, _, _ = trained
    ids = reference(STORIES)[0]
    want = torch_logits(model, ids)
    m = hxq.load(ckpts["stories_v2_4"], lora=adapter, exact=True)
    assert m.lora == str(adapter) and m.info["lora_modules"] == 35
    got = m.logits(ids)
    assert np.abs(got - want).max() < TORCH_VS_ENGINE_ABS
    base = hxq.load(ckpts["stories_v2_4"], exact=True).logits(ids)
    assert np.abs(base - want).max() > 50 * TORCH_VS_ENGINE_ABS  # the adapter changed something
    fast = hxq.load(ckpts["stories_v2_4"], lora=adapter)
    assert np.array_equal(fast.logits(ids), cli_logits(ckpts["stories_v2_4"], ids, tmp_path, "--lora", adapter))
    assert fast.generate("Once upon a time", max_tokens=16)


def test_load_lora_round_trip(trained, ckpts):
    model, adapter, _, _ = trained
    fresh = CausalLM.from_pretrained(STORIES)
    replace_linear(fresh, ckpts["stories_v2_4"])
    assert len(load_lora(fresh, adapter)) == 35
    ids = reference(STORIES)[0][:64]
    assert np.array_equal(torch_logits(fresh, ids), torch_logits(model, ids))
    sd = lora_state_dict(fresh)
    assert all(torch.equal(sd[k], v) for k, v in lora_state_dict(model).items())


def test_merge_lora_before_compressing(trained, tmp_path):
    _, adapter, _, _ = trained
    dense = CausalLM.from_pretrained(STORIES)
    load_lora(dense, adapter)  # the same adapter on the dense base
    ids = reference(STORIES)[0]
    want = torch_logits(dense, ids)
    merged = tmp_path / "merged"
    receipt = hxq.compress(STORIES, merged, merge_lora=adapter)
    assert receipt["merged_lora"]["modules"] == 35
    got = hxq.load(merged).logits(ids)
    unmerged = hxq.load(STORIES).logits(ids)
    err, err_unmerged = np.abs(got - want).max(), np.abs(unmerged - want).max()
    assert err < 0.1 * err_unmerged, (err, err_unmerged)


def test_lora_errors(ckpts, tmp_path, trained):
    model = CausalLM.from_pretrained(STORIES)
    with pytest.raises(ValueError, match="no Linear layer matches"):
        add_lora(model, target=["nothing"])
    with pytest.raises(ValueError, match="no LoRA layers"):
        save_lora(model, tmp_path / "none")
    _, adapter, _, _ = trained
    # an adapter for another base (llama-tiny: hidden 64 but other shapes) is refused by the engine
    with pytest.raises(hxq.Error, match="another base model"):
        hxq.load(os.path.join(FIXTURES, "llama-tiny"), lora=adapter)
    with pytest.raises(hxq.Error):
        hxq.load(ckpts["stories_v2"], lora=tmp_path / "missing-adapter")
    assert isinstance(model.get_submodule("model.layers.0.self_attn.q_proj"), nn.Linear)
    lora = LoraLinear(nn.Linear(8, 4), r=2, alpha=4, use_rslora=True)
    assert lora.scaling == pytest.approx(4 / np.sqrt(2))
    x = torch.randn(3, 8)
    assert torch.equal(lora(x), lora.base_layer(x))  # B starts at zero
