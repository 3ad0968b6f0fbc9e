"""The names ``d2scale vision`` offers, written once: datasets, models (and the seeds'
spellings of them), training-dynamics scores, DRoP scorers, and the coreset methods with
what each reads and how it is applied. A leaf module: the CLI offers the names without
importing torch. Each coreset method's picker is in :data:`d2scale.vision.coresets.PICKERS`;
adding a method touches these two."""

from __future__ import annotations

from dataclasses import dataclass

DATASETS = ("cifar10", "cifar100", "imagenet", "tinyimagenet", "waterbirds", "digits", "mnist5k")
MODELS = ("resnet18", "resnet34", "resnet50", "vgg16_bn", "vgg19_bn", "cnn")
DATASET_MODELS = {"digits": "cnn", "mnist5k": "cnn", "imagenet": "resnet50"}  # without --model
DEFAULT_MODEL = "resnet18"  # without --model, other datasets
MODEL_ALIASES = {  # the seeds' spellings
    "vgg16": "vgg16_bn",
    "VGG16": "vgg16_bn",
    "vgg19": "vgg19_bn",
    "VGG19": "vgg19_bn",
    "ResNet18": "resnet18",
    "ResNet34": "resnet34",
    "ResNet50": "resnet50",
}

# training-dynamics scores (SPEC §3; d2scale.vision.dynamics logs them) and their short names
SCORES = ("forgetting", "accumulated_margin", "el2n", "entropy", "dynamic_uncertainty", "grand")
SCORE_ALIASES = {"aum": "accumulated_margin", "dynunc": "dynamic_uncertainty"}

# DRoP scorer → (coreset method, the score slot it ranks by; see prune.MODEL_SCORES)
SCORERS = {
    "random": ("random", None),
    "el2n": ("topk", "el2n"),  # the final query model's, eval mode (released DRoP)
    "grand": ("topk", "grand"),  # the final query model's full-model gradient norm (released)
    "el2n-early": ("topk", "el2n"),  # in-training mean over the first 10 epochs
    "grand-early": ("topk", "grand"),  # in-training, last layer, first 10 epochs
    "forgetting": ("topk", "forgetting"),
    "dynunc": ("topk", "dynamic_uncertainty"),
    "aum": ("topk", "accumulated_margin"),
    "entropy": ("topk", "entropy"),
    "d2": ("d2", None),
    "kcenter": ("kcenter", None),
    "margin": ("topk", "entropy"),  # active learning only, like the two below
    "variation_ratio": ("topk", "entropy"),
    "bald": ("topk", "entropy"),
}
# the DRoP seed's scorer names (lower-cased)
SCORER_ALIASES = {
    "dynamicuncertainty": "dynunc",
    "gradientbased": "grand",
    "coreset": "kcenter",
    "maxentropy": "entropy",
    "variationratio": "variation_ratio",
}
AL_ONLY = ("margin", "variation_ratio", "bald")  # uncertainty of the unlabelled pool
AL_SCORERS = ("random", "el2n", "grand", "entropy", *AL_ONLY, "d2", "kcenter")
DP_SCORERS = tuple(k for k in SCORERS if k not in AL_ONLY)
# said in --scorer's help after the scorer named
SCORER_NOTES = {"grand": "the final query model's, as DRoP's code", "grand-early": "in-training"}


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
