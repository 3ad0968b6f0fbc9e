"""DataComp's LAION-2B reproduction: English captions whose CLIP ViT-B/32 score is ≥ 0.28.

DataComp identifies the language with gcld3; the default here is the same fastText
identifier as ``basic`` (``lang_model=PATH`` loads another fastText model), so labels can
differ from DataComp's on short or mixed captions. The score is compared in the column's
own precision (float32), as DataComp's ``df[key] >= threshold`` does.
"""

from __future__ import annotations

import numpy as np

from d2scale.errors import D2ScaleError
from d2scale.methods._filters import check_language
from d2scale.methods._options import step_options

THRESHOLD = 0.28
COLUMN = "clip_b32_similarity_score"


def laion2b_mask(scores, languages, threshold: float = THRESHOLD, language: str = "en"):
    """Boolean mask: caption in ``language`` and score ≥ ``threshold`` (NaN fails)."""
    s = np.asarray(scores)
    if not np.issubdtype(s.dtype, np.floating):
        try:
            s = s.astype(np.float64)
        except (TypeError, ValueError):
            raise D2ScaleError(f"CLIP scores must be numbers; found {s.dtype} values.") from None
    if s.shape[0] != len(languages):
        raise D2ScaleError("laion2b filter: scores and languages differ in length.")
    return (s >= s.dtype.type(threshold)) & (np.asarray(languages, dtype=object) == language)


DESCRIPTION = "DataComp LAION-2B filter: English captions with clip_b32 score ≥ 0.28"


def options(given: dict, params) -> dict:
    """``threshold`` (0.28), ``column`` (clip_b32_similarity_score), ``language`` (en),
    ``lang_model=PATH``."""
    spec = {"threshold": (float, THRESHOLD), "column": (str, COLUMN), "language": (str, "en"),
            "lang_model": (str, None)}  # fmt: skip
    return check_language("laion2b", step_options("laion2b", given, spec))


def rank(inputs, params):
    """Registry adapter over the ``text`` and score columns (see :func:`options`)."""
    from d2scale.methods._filters import caption_languages, filter_ranking

    opts = options(inputs.options, params)
    lang = caption_languages(inputs, inputs.column("text"), opts.pop("lang_model"))
    mask = laion2b_mask(inputs.column(opts["column"]), lang, opts["threshold"], opts["language"])
    info = {"english": int(np.sum(lang == opts["language"])), **opts}
    return filter_ranking(np.flatnonzero(mask), inputs, params, info)
