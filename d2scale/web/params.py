"""The parameters of ``d2scale embed`` and ``d2scale export``, written once: default, choices
and range of each. ``cli/web.py`` generates the flags from this table and
:class:`~d2scale.web.embed.EmbedParams` / :class:`~d2scale.web.export.ExportParams` take
their defaults and checks from it. A leaf module: ``--help`` needs neither torch nor
open_clip."""

from __future__ import annotations

from typing import Any

from d2scale.params import MAX_SEED, Param, param_field, shared

MODEL_PREFIXES = {"ViT-B-32": "b32", "ViT-L-14": "l14"}  # npz prefixes; others: from the name
RANDOM = "none"  # --pretrained value for random weights


def _p(name: str, kind: str, default: Any, help: str, **kw: Any) -> Param:
    return Param(name, kind, default, help, "web", (), **kw)


WEB: dict[str, Param] = {
    # --- embed ---------------------------------------------------------------------------------
    "model": _p("model", "str", "ViT-B-32", "open_clip model name"),
    "batch_size": _p("batch_size", "int", 64, "samples per batch", low=1, metavar="N"),
    "device": shared("device", "auto: cuda (fp16) when torch sees a GPU, else cpu", "web"),
    "threads": _p("threads", "int", None, "torch and image-decoding threads (default: all)",
                  low=1, optional=True, metavar="N"),
    "seed": _p("seed", "int", 0, "seed of random weights", low=0, high=MAX_SEED, metavar="N"),
    # --- export --------------------------------------------------------------------------------
    "samples_per_shard": _p("samples_per_shard", "int", 10000, "samples per output shard; the "
                            "last shard may hold fewer", low=1, metavar="N"),
}  # fmt: skip


def wfield(key: str) -> Any:
    """A dataclass field whose default is the table's."""
    return param_field(WEB[key])
