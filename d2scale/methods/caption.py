"""DataComp's image-based baseline caption filter: English captions of more than one word
and more than five characters, no image-size rule. DataComp applies it before clustering
(``--method caption --then image-clustering:targets=T.npy``).

Words are counted as fastText's tokenizer counts them (``fasttext.tokenize``, DataComp's
choice here, unlike ``basic``'s ``str.split``): runs of characters other than space, tab,
newline, carriage return, vertical tab, form feed and NUL, plus one end-of-sentence token
per newline. The language is the same fastText label as ``basic``'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from d2scale.methods._filters import check_language
from d2scale.methods._options import at_least, step_options

_FASTTEXT_WORD = re.compile(r"[^ \n\r\t\v\f\0]+")


@dataclass(frozen=True)
class CaptionRules:
    """The thresholds of DataComp's ``caption_filter``."""

    min_words: int = 2  # len(fasttext.tokenize(text)) > 1
    min_chars: int = 6  # len(text) > 5
    language: str = "en"


def fasttext_word_count(text: str) -> int:
    """``len(fasttext.tokenize(text))``: words, plus an end-of-sentence token per newline."""
    return len(_FASTTEXT_WORD.findall(text)) + text.count("\n")


def caption_mask(texts, languages, rules: CaptionRules = CaptionRules()) -> np.ndarray:
    """Boolean mask of the captions that pass every rule (a null caption fails)."""
    texts = ["" if t is None else str(t) for t in texts]
    words = np.array([fasttext_word_count(t) for t in texts], dtype=np.int64)
    chars = np.array([len(t) for t in texts], dtype=np.int64)
    english = np.asarray(languages, dtype=object) == rules.language
    return (words >= rules.min_words) & (chars >= rules.min_chars) & english


DESCRIPTION = "DataComp image-based caption filter: English captions of > 1 word, > 5 characters"


def options(given: dict, params) -> dict:
    """The step's options: :class:`CaptionRules`' fields and ``lang_model``."""
    defaults = CaptionRules()
    spec = {name: (type(getattr(defaults, name)), getattr(defaults, name))
            for name in ("min_words", "min_chars", "language")}  # fmt: skip
    spec["lang_model"] = (str, None)
    opts = at_least("caption", step_options("caption", given, spec), 0, "min_words", "min_chars")
    return check_language("caption", opts)


def rank(inputs, params):
    """Registry adapter over the ``text`` column; options override :class:`CaptionRules`,
    ``lang_model=PATH`` loads another fastText model."""
    from d2scale.methods._filters import caption_languages, filter_ranking

    opts = options(inputs.options, params)
    model = opts.pop("lang_model")
    texts = inputs.column("text")
    lang = caption_languages(inputs, texts, model)
    keep = np.flatnonzero(caption_mask(texts, lang, CaptionRules(**opts)))
    return filter_ranking(keep, inputs, params, {"english": int(np.sum(lang == opts["language"])),
                                                 **opts})  # fmt: skip
