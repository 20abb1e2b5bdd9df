"""hxq quickstart: compress stories260K, load it, generate, stream, logits, perplexity, KL, errors.
Run from the repository root after installing the package (README.md, "Python"); writes out/stories-hxq."""
import os

os.makedirs("out", exist_ok=True)
import hxq
r = hxq.compress("../shared/models/stories260K-hf", "out/stories-hxq", bits=8, overwrite=True)
print(r["format"], r["bits_per_weight"], r["modules_compressed"], f'{r["ratio"]:.2f}')
m = hxq.load("out/stories-hxq", threads=2)
print(m)
print(m.info)
print(m.generate("Once upon a time", max_tokens=32))
for piece in m.stream("Once upon a time", max_tokens=12):
    print(piece, end="|")
print()
ids = m.tokenizer.encode("Lily and Ben went to the")
x = m.logits(ids)
print(x.shape, x.dtype, m.tokenizer.decode([int(x[-1].argmax())]))
s = m.new_state()
last = m.forward(s, ids)
print(s.position, (last == x[-1]).all())
text = open("../shared/data/corpora/gutenberg/pg11.txt", encoding="utf-8", newline="").read()
p = m.perplexity(text, ctx=512, stride=256, max_tokens=4096)
print({k: p[k] for k in ("ppl", "scored_tokens", "tokens_per_s")})
k = hxq.load("../shared/models/stories260K-hf").kl(m, text, ctx=512, stride=256, max_tokens=4096)
print({k2: k[k2] for k2 in ("kl_mean", "top1_agreement", "ppl_base", "ppl_other")})
try:
    m.logits([1, 2, 9999])
except ValueError as e:
    print(type(e).__name__, e)
try:
    hxq.load("out/nothing-here")
except hxq.Error as e:
    print(type(e).__name__, e)
