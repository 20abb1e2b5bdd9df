"""LoRA on frozen HXQ layers: stories260K (compressed by quickstart.py) in plain PyTorch, its linear
layers replaced by HxqLinear, rank-8 adapters trained for 100 steps on Alice in Wonderland (past its
first 20,000 characters, which are held out), saved in PEFT format and applied by the engine. Run
from the repository root after examples/quickstart.py."""
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
text = open("../shared/data/corpora/gutenberg/pg11.txt", encoding="utf-8", newline="").read()
held_out, train = text[:20000], tok.encode(text[20000:])  # the engine scores the first 20,000 characters
g = torch.Generator().manual_seed(0)
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
for step in range(100):
    starts = torch.randint(0, len(train) - 129, (8,), generator=g).tolist()
    batch = torch.tensor([train[i:i + 129] for i in starts])
    logits = model(batch[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 512), batch[:, 1:].reshape(-1))
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 25 == 0 or step == 99:
        print(f"step {step:3d} loss {loss.item():.3f}")
save_lora(model, "out/alice-lora", base_model_name_or_path="stories260K")

base = hxq.load("out/stories-hxq")
tuned = hxq.load("out/stories-hxq", lora="out/alice-lora")
for name, mm in (("base", base), ("LoRA", tuned)):
    print(name, "held-out PPL", round(mm.perplexity(held_out, ctx=512, stride=256)["ppl"], 2))

m = hxq.load("out/stories-hxq", lora="out/alice-lora", exact=True)
x = np.array(tok.encode("Alice was beginning to get very tired"))
with torch.no_grad():
    want = model(torch.from_numpy(x))[0].numpy()
print(m, "max |engine - torch| =", float(np.abs(m.logits(x) - want).max()))
