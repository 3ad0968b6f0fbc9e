"""DataComp's text-based baseline: English captions that name a class of a list the user
gives (DataComp: the ImageNet-21k classes).

``classes=FILE`` is a text file with one class per line, in one of two forms:

* WordNet ids (``n01440764``), DataComp's own rule: a caption names a class when, for some
  word of ``text.split()``, the first WordNet synset of the word has the class's offset.
  This needs ``nltk`` and its ``wordnet`` corpus.
* Lemmas, synonyms separated by commas (``tench, Tinca tinca``): a caption names a class
  when its lower-cased words (``text.lower().split()``) contain one of the lemmas, a
  multi-word lemma as consecutive words. No lookup: plural or inflected forms do not match.

The language is the same fastText label as ``basic``'s.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from d2scale.errors import D2ScaleError
from d2scale.methods._filters import check_language
from d2scale.methods._options import REQUIRED, step_options

_WORDNET_ID = re.compile(r"^n\d{8}$")

Matcher = Callable[[str], bool]


def read_classes(path: str) -> list[str]:
    """The non-empty, stripped lines of the class list ``path``."""
    from d2scale import io

    try:
        fs, local = io.filesystem(path)
        with fs.open(local, "r", encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as e:
        raise D2ScaleError(f"cannot read the class list {path}: {e}") from None
    classes = [line for line in lines if line]
    if not classes:
        raise D2ScaleError(f"the class list {path} holds no class (one per line).")
    return classes


def lemma_matcher(classes: list[str]) -> Matcher:
    """Does a caption's lower-cased word sequence contain one of the lemmas?"""
    lemmas = {tuple(lemma.lower().split()) for line in classes for lemma in line.split(",")}
    lemmas.discard(())
    lengths = sorted({len(lemma) for lemma in lemmas})

    def names_a_class(text: str) -> bool:
        words = text.lower().split()
        return any(tuple(words[i : i + n]) in lemmas
                   for n in lengths for i in range(len(words) - n + 1))  # fmt: skip

    return names_a_class


def wordnet_matcher(classes: list[str], synsets: Callable | None = None) -> Matcher:
    """DataComp's rule over WordNet ids; ``synsets`` (word → synsets) defaults to nltk's."""
    if synsets is None:
        synsets = _nltk_synsets()
    offsets = {int(c[1:]) for c in classes}
    first: dict[str, int | None] = {}

    def key(word: str) -> int | None:
        if word not in first:
            found = synsets(word)
            first[word] = found[0].offset() if found else None
        return first[word]

    return lambda text: any(key(word) in offsets for word in text.split())


def _nltk_synsets() -> Callable:
    try:
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
    except (ImportError, LookupError):
        raise D2ScaleError(
            "a class list of WordNet ids needs nltk and its wordnet corpus: "
            "pip install nltk && python -m nltk.downloader wordnet (or list lemmas instead)."
        ) from None
    return wordnet.synsets


def class_matcher(classes: list[str]) -> tuple[Matcher, str]:
    """The rule for ``classes`` and its name: all WordNet ids, or lemmas."""
    ids = [bool(_WORDNET_ID.match(c)) for c in classes]
    if all(ids):
        return wordnet_matcher(classes), "wordnet"
    if any(ids):
        raise D2ScaleError("the class list mixes WordNet ids and lemmas; give one kind.")
    return lemma_matcher(classes), "lemmas"


def text_based_mask(texts, languages, names_a_class: Matcher, language: str = "en"):
    """Boolean mask: caption in ``language`` that names a class (a null caption fails)."""
    texts = ["" if t is None else str(t) for t in texts]
    named = np.array([names_a_class(t) for t in texts], dtype=bool)
    return named & (np.asarray(languages, dtype=object) == language)


DESCRIPTION = "DataComp text-based: English captions naming a class of classes=FILE"


def options(given: dict, params) -> dict:
    """``classes=FILE`` (required; the list is read and checked here, before any work),
    ``language`` (en), ``lang_model``."""
    if "classes" not in given:
        raise D2ScaleError("method 'text-based' needs its class list: text-based:classes=FILE "
                           "(one class per line: lemmas or WordNet ids).")  # fmt: skip
    spec = {"classes": (str, REQUIRED), "language": (str, "en"), "lang_model": (str, None)}
    opts = check_language("text-based", step_options("text-based", given, spec))
    class_matcher(read_classes(opts["classes"]))
    return opts


def rank(inputs, params):
    """Registry adapter over the ``text`` column (see :func:`options`)."""
    from d2scale.methods._filters import caption_languages, filter_ranking

    opts = options(inputs.options, params)
    classes = read_classes(opts["classes"])
    names_a_class, kind = class_matcher(classes)
    texts = inputs.column("text")
    lang = caption_languages(inputs, texts, opts.pop("lang_model"))
    keep = np.flatnonzero(text_based_mask(texts, lang, names_a_class, opts["language"]))
    info = {**opts, "class_list": kind, "n_classes": len(classes),
            "english": int(np.sum(lang == opts["language"]))}  # fmt: skip
    return filter_ranking(keep, inputs, params, info)
