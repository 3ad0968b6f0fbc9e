"""Parameters of ``select`` with their defaults and constraints, shared by library, CLI and
``run.json``. Every violated constraint becomes one sentence naming the parameter."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from d2scale.errors import D2ScaleError
from d2scale.sources import EMBEDDING_MODELS, FEATURE_TYPES

CHOICES = {
    "embedding_model": EMBEDDING_MODELS,
    "feature_type": FEATURE_TYPES,
    "mode": ("sum", "product"),
    "sampling": ("weighted", "absolute"),
    "greedy": ("exact", "standby"),
    "index": ("auto", "exact", "ivf"),
    "device": ("auto", "cpu", "cuda"),
}


@dataclass
class SelectParams:
    """Everything that determines a selection (see ``d2scale select --help``)."""

    metadata_dir: str | None = None  # None: the built-in 100k-row sample pool
    out: str = "d2scale-out"
    fractions: list[float] = field(default_factory=lambda: [0.3])
    embedding_model: str = "l14"
    feature_type: str = "image_text"
    score_column: str | None = None  # None: clip_<embedding_model>_similarity_score
    score_shift: float = 0.115
    n_neighbors: int = 5
    gamma: float = 1.0  # reverse kernel width (1.0 for DataComp pools, 0.1 for vision)
    gamma_forward: float = 1.0
    mode: str = "sum"
    sampling: str = "weighted"
    greedy: str = "exact"
    buckets: int | None = None
    index: str = "auto"
    recall: float = 0.95
    memory_limit: int | None = None
    device: str = "auto"
    graph: str | None = None  # reuse a graph directory made by `d2scale graph`
    seed: int = 0
    scheduler: str | None = None
    workers: int | None = None

    @property
    def resolved_score_column(self) -> str:
        return self.score_column or f"clip_{self.embedding_model}_similarity_score"

    def validate(self) -> SelectParams:
        for name, options in CHOICES.items():
            value = getattr(self, name)
            if value not in options:
                raise D2ScaleError(
                    f"the {name!r} parameter must be one of {', '.join(options)}; got {value!r}"
                )
        if not self.fractions:
            raise D2ScaleError("give at least one fraction")
        for f in self.fractions:
            if not (isinstance(f, (int, float)) and 0 < f <= 1):
                raise D2ScaleError(f"the 'fraction' parameter must be in (0, 1]; got {f!r}")
        _positive_int("n_neighbors", self.n_neighbors)
        for name in ("gamma", "gamma_forward"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise D2ScaleError(f"the {name!r} parameter must be a number ≥ 0; got {v!r}")
        if not math.isfinite(self.score_shift):
            raise D2ScaleError(
                f"the 'score_shift' parameter must be finite; got {self.score_shift}"
            )
        if not 0 < self.recall <= 1:
            raise D2ScaleError(f"the 'recall' parameter must be in (0, 1]; got {self.recall}")
        if self.buckets is not None:
            _positive_int("buckets", self.buckets)
        if self.workers is not None:
            _positive_int("workers", self.workers)
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["score_column"] = self.resolved_score_column
        return d


def _positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise D2ScaleError(f"the {name!r} parameter must be an integer ≥ 1; got {value!r}")


def budget_for(fraction: float, n: int) -> int:
    """``int(fraction·n)``, robust to float error (0.29·100 is 29, not 28)."""
    return min(n, int(math.floor(fraction * n + 1e-9)))


def parse_fractions(text: str) -> list[float]:
    """``"0.1,0.2,0.3"`` → ``[0.1, 0.2, 0.3]`` (sorted, de-duplicated)."""
    try:
        values = sorted({float(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise D2ScaleError(f"--fraction takes numbers separated by commas; got {text!r}") from None
    return values
