#!/usr/bin/env python3
"""Fails when a source file includes a module its layer may not know (docs/ARCHITECTURE.md).

Each folder of src/ is a module; a module may include only the modules listed for it below
(itself included). Run by CTest (LayerBoundaries); prints one line per forbidden include.
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# module -> the modules it may include (lower layers; see docs/ARCHITECTURE.md)
ALLOWED = {
    "core": {"core"},
    "io": {"core", "io"},
    "tokenizer": {"core", "io", "tokenizer"},
    # Kernels know arrays: no files, no formats, no models.
    "kernels": {"core", "kernels"},
    # The codec knows tensors and formats (it may use the kernels' array views), never architectures.
    "codec": {"core", "io", "kernels", "codec"},
    "models": {"core", "io", "kernels", "codec", "models"},
    "eval": {"core", "io", "kernels", "codec", "models", "tokenizer", "eval"},
    "server": {"core", "io", "kernels", "codec", "models", "tokenizer", "server"},
    "cli": {"core", "io", "kernels", "codec", "models", "tokenizer", "eval", "server", "cli"},
    # The Python extension is a front end like the CLI (it shares the server's stop-string matcher).
    "python": {"core", "io", "kernels", "codec", "models", "tokenizer", "eval", "server", "python"},
}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([a-z_]+)/[^"]+"', re.M)


def main():
    bad = []
    src = os.path.join(ROOT, "src")
    dirs = [(src, None), (os.path.join(ROOT, "python"), "python")]
    for base, fixed in dirs:
        for dirpath, _, files in os.walk(base):
            for f in sorted(files):
                if not f.endswith((".h", ".cpp", ".cu", ".cuh")):
                    continue
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, ROOT)
                module = fixed or os.path.relpath(path, src).split(os.sep)[0]
                if module not in ALLOWED:
                    bad.append(f"{rel}: module '{module}' has no entry in scripts/check_layers.py")
                    continue
                text = open(path, encoding="utf-8", errors="replace").read()
                for m in INCLUDE.finditer(text):
                    dep = m.group(1)
                    if dep in ALLOWED and dep not in ALLOWED[module]:
                        line = text.count("\n", 0, m.start()) + 1
                        bad.append(f"{rel}:{line}: {module} may not include {dep}/ ({m.group(0).strip()})")
    for b in bad:
        print(b)
    if bad:
        print(f"{len(bad)} forbidden include(s); the layers are drawn in docs/ARCHITECTURE.md")
        return 1
    print("layer boundaries: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
