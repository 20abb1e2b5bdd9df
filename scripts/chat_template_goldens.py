#!/usr/bin/python3
"""Renders the chat templates of tests/data/chat_templates with Python's jinja2, configured the
way Hugging Face transformers renders chat templates, and writes the golden renderings the C++
engine (src/server/jinja.cpp) must reproduce byte for byte (tests/jinja_test.cpp).

transformers (utils/chat_template_utils.py, _compile_jinja_template / render_jinja_template):
  jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                               extensions=[jinja2.ext.loopcontrols])
  filters["tojson"]  = json.dumps(x, ensure_ascii=False, indent=indent, separators=separators,
                                  sort_keys=sort_keys)
  globals["raise_exception"] raises TemplateError(message)
  globals["strftime_now"](fmt) = datetime.now().strftime(fmt)
  template.render(messages=..., tools=None, documents=None, add_generation_prompt=...,
                  **special_tokens_map, **kwargs)
where special_tokens_map holds only the tokens the tokenizer defines. The one difference here:
strftime_now() reads a fixed clock (manifest.json's strftime_now_time) so the goldens are stable.
(transformers' {% generation %} extension is left out: none of these templates use it.)

Run with Debian's interpreter, which has python3-jinja2:
  /usr/bin/python3 scripts/chat_template_goldens.py            # rewrites goldens.json
  /usr/bin/python3 scripts/chat_template_goldens.py --out F    # writes F instead
"""
import argparse
import json
import os
import sys
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data", "chat_templates")


def make_env(now: float) -> ImmutableSandboxedEnvironment:
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.fromtimestamp(now).strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render(env, source, messages, add_generation_prompt, tokens, extra):
    kwargs = {"messages": messages, "tools": None, "documents": None, "add_generation_prompt": add_generation_prompt}
    kwargs.update({k: v for k, v in tokens.items() if v is not None})
    kwargs.update(extra)
    try:
        return {"output": env.from_string(source).render(**kwargs)}
    except jinja2.exceptions.TemplateError as e:
        # raise_exception() raises TemplateError itself; jinja2's own errors are subclasses.
        kind = "raise_exception" if type(e) is jinja2.exceptions.TemplateError else type(e).__name__
        return {"error": {"type": kind, "message": str(e)}}
    except Exception as e:  # TypeError etc. from Python operations inside the template
        return {"error": {"type": type(e).__name__, "message": str(e)}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=DATA, help="the chat_templates data directory")
    ap.add_argument("--out", help="output file (default: <data>/goldens.json)")
    args = ap.parse_args()

    with open(os.path.join(args.data, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    env = make_env(manifest["strftime_now_time"])
    conv_dir = os.path.join(args.data, "conversations")
    conversations = []
    for name in sorted(os.listdir(conv_dir)):
        if name.endswith(".json"):
            with open(os.path.join(conv_dir, name), encoding="utf-8") as f:
                conversations.append((name[: -len(".json")], json.load(f)))

    cases = []
    for t in manifest["templates"]:
        with open(os.path.join(args.data, "templates", t["name"] + ".jinja"), encoding="utf-8", newline="") as f:
            source = f.read()
        tokens = {"bos_token": t["bos_token"], "eos_token": t["eos_token"]}
        for conv_name, conv in conversations:
            for agp in (False, True):
                case = {"template": t["name"], "conversation": conv_name, "add_generation_prompt": agp}
                case.update(render(env, source, conv["messages"], agp, tokens, conv.get("extra", {})))
                cases.append(case)

    text = json.dumps({"jinja2_version": jinja2.__version__, "cases": cases}, ensure_ascii=False, indent=1) + "\n"
    out = args.out or os.path.join(args.data, "goldens.json")
    with open(out, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    errors = sum("error" in c for c in cases)
    print(f"{out}: {len(cases)} renderings ({errors} expected errors)", file=sys.stderr)


if __name__ == "__main__":
    main()
