"""LoRA on frozen HXQ layers: stories260K (compressed by quickstart.py) in plain PyTorch, its linear
layers replaced by HxqLinear, rank-8 adapters trained for 30 steps on Alice in Wonderland, saved in
PEFT format and applied by the engine. Run from the repository root after examples/quickstart.py."""
import sys
import numpy as np
import torch
import hxq
from hxq.torch import replace_linear, add_lora, save_lora
sys.path.insert(0, "tests/python")  # the test suite's plain-PyTorch Llama
from torch_llama import CausalLM  # transformers' Llama equations and names in plain PyTorch

torch.manual_seed(0)
model = CausalLM.from_pretrained("../shared/models/stories260K-hf")
names = replace_linear(model, "out/stories-hxq")
print(len(names), "layers replaced, e.g.", model.model.layers[0].self_attn.q_proj)
print(add_lora(model, r=8, alpha=16, target=["q_proj", "v_proj", "down_proj"])[:3], "...")
print(sum(p.numel() for p in model.parameters() if p.requires_grad), "trainable parameters")

tok = hxq.Tokenizer.load("../shared/models/stories260K-hf")
ids = tok.encode(open("../shared/data/corpora/gutenberg/pg11.txt", encoding="utf-8").read()[:40000])
batch = torch.tensor([ids[i * 128:(i + 1) * 128 + 1] for i in range(8)])
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
for step in range(30):
    logits = model(batch[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 512), batch[:, 1:].reshape(-1))
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 10 == 0 or step == 29:
        print(f"step {step:2d} loss {loss.item():.3f}")
save_lora(model, "out/alice-lora", base_model_name_or_path="stories260K")

m = hxq.load("out/stories-hxq", lora="out/alice-lora", exact=True)
x = np.array(tok.encode("Alice was beginning to get very tired"))
with torch.no_grad():
    want = model(torch.from_numpy(x))[0].numpy()
print(m, "max |engine - torch| =", float(np.abs(m.logits(x) - want).max()))
