"""The coreset methods of ``d2scale vision`` by name, with what each reads and how it is
applied (a leaf module: the CLI offers the names without importing torch). Each name's
picker is in :data:`d2scale.vision.coresets.PICKERS`; adding a method touches these two."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CoresetMethod:
    """What a coreset method reads and how :func:`~d2scale.vision.coresets.select_coreset`
    applies it."""

    description: str
    reads_score: bool = False  # a training-dynamics score (--score)
    reads_features: bool = False  # the full-data run's features
    per_class: bool = False  # class mode unless --coreset-mode says otherwise
    removes_mislabeled: bool = False  # --mis-ratio auto may remove low-AUM samples first


CORESET_METHODS: dict[str, CoresetMethod] = {
    "random": CoresetMethod("a seeded uniform sample"),
    "topk": CoresetMethod("the hardest by --score", reads_score=True),
    "d2": CoresetMethod(
        "D2 class mode: message passing on per-class kNN graphs",
        reads_score=True,
        reads_features=True,
        per_class=True,
        removes_mislabeled=True,
    ),  # fmt: skip
    "ccs": CoresetMethod("CCS: stratified by --score", reads_score=True, removes_mislabeled=True),
    "moderate": CoresetMethod(
        "Moderate-DS: around the median distance to the class centre", reads_features=True
    ),  # fmt: skip
    "kcenter": CoresetMethod(
        "k-center greedy on the features", reads_features=True, per_class=True
    ),  # fmt: skip
}
METHODS = tuple(CORESET_METHODS)
