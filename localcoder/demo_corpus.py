"""A deterministic synthetic code corpus: enough structure for a small code tokenizer, no downloads."""

from __future__ import annotations

import random

_NAMES = ["value", "items", "result", "count", "index", "name", "path", "config", "data", "node", "token",
          "buffer", "offset", "size", "model", "layer", "weight", "cache", "request", "response", "user"]
_TYPES = ["int", "str", "float", "bool", "list[int]", "dict[str, int]", "bytes", "None"]
_TEXT = ["Return the sum of the values.", "Load the model from disk.", "Parse one request and answer it.",
         "Der schnelle braune Fuchs springt.", "Le modèle répond en français.", "快速的棕色狐狸跳过了懒狗。",
         "数値を返します。", "Ünïcödé strings: naïve café, 🚀 launch ✅ done.", "Привет, мир!"]


def _python_function(rng: random.Random) -> str:
    fn, a, b = rng.choice(_NAMES), rng.choice(_NAMES), rng.choice(_NAMES)
    ta, tr = rng.choice(_TYPES), rng.choice(_TYPES)
    body = rng.choice([
        f"    for {b} in range(len({a})):\n        if {a}[{b}] > {rng.randint(0, 99)}:\n            return {b}\n",
        f"    {b} = [{a} * {rng.randint(2, 9)} for {a} in {a}]\n    return sum({b})\n",
        f"    with open({a}) as f:\n        return f.read().split(\"\\n\")\n",
        f"    if not {a}:\n        raise ValueError(f\"empty {{{a}!r}}\")\n    return {a}.{rng.choice(_NAMES)}\n",
    ])
    return f"def get_{fn}({a}: {ta}) -> {tr}:\n    \"\"\"{rng.choice(_TEXT)}\"\"\"\n{body}\n"


def _javascript_function(rng: random.Random) -> str:
    fn, a = rng.choice(_NAMES), rng.choice(_NAMES)
    return (f"export async function {fn}({a}) {{\n  const res = await fetch(`/api/${{{a}}}`);\n"
            f"  if (!res.ok) {{ throw new Error(\"{rng.choice(_TEXT)}\"); }}\n  return res.json();\n}}\n")


def code_corpus(n_snippets: int = 400, seed: int = 0) -> list[str]:
    """`n_snippets` Python / JavaScript / prose snippets, always the same for the same arguments."""
    rng = random.Random(seed)
    makers = [_python_function, _python_function, _javascript_function]
    out = [rng.choice(makers)(rng) for _ in range(n_snippets)]
    out += [f"{t} {rng.randint(0, 10 ** rng.randint(1, 8))}" for t in _TEXT for _ in range(5)]
    return out
