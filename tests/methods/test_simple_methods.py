"""random, clip-score and basic: hand-checked small cases."""

import numpy as np
import pytest

from d2scale.errors import D2ScaleError
from d2scale.methods._filters import detect_languages
from d2scale.methods.basic import BasicRules, basic_filter, basic_mask
from d2scale.methods.clip_score import clip_score_order
from d2scale.methods.random import random_order


def test_random_is_a_seeded_permutation():
    a, b, c = random_order(50, 3), random_order(50, 3), random_order(50, 4)
    assert a.dtype == np.int64 and sorted(a) == list(range(50))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert random_order(0, 1).shape == (0,)


def test_clip_score_top_first_ties_to_lower_row():
    scores = np.array([0.2, 0.5, 0.1, 0.5, 0.3])
    np.testing.assert_array_equal(clip_score_order(scores), [1, 3, 4, 0, 2])
    np.testing.assert_array_equal(clip_score_order(scores, threshold=0.3), [1, 3, 4])
    assert clip_score_order(scores, threshold=0.9).size == 0
    with pytest.raises(D2ScaleError, match="row 1 is null, NaN"):
        clip_score_order(np.array([0.1, np.nan]))


CASES = [  # text, width, height, language, kept
    ("a red car on a road", 640, 480, "en", True),
    ("a red car", 200, 600, "en", True),  # 3 words, aspect exactly 3
    ("red car", 640, 480, "en", False),  # 2 words
    ("a b c", 640, 480, "en", False),  # 5 characters
    ("a red car on a road", 199, 480, "en", False),  # shorter side < 200
    ("a red car on a road", 200, 601, "en", False),  # aspect > 3
    ("ein rotes Auto auf der Straße", 640, 480, "de", False),  # not English
    (None, 640, 480, "en", False),  # no caption
    ("a red car on a road", np.nan, 480, "en", False),  # unknown size
    ("a red car on a road", 0, 480, "en", False),
]


def test_basic_rules_row_by_row():
    texts, w, h, lang, kept = (list(c) for c in zip(*CASES, strict=True))
    np.testing.assert_array_equal(basic_mask(texts, w, h, lang), kept)
    np.testing.assert_array_equal(basic_filter(texts, w, h, lang), np.flatnonzero(kept))
    loose = BasicRules(min_words=2, min_size=100)
    assert basic_mask(["red car"], [150], [150], ["en"], loose).tolist() == [True]


def test_language_identifier_ships_with_its_package():
    texts = [
        "a photo of a dog running on the beach",
        "ein Foto von einem Hund am Strand",
        "una foto de un perro en la playa",
        "line one\nline two of an english caption",
        None,
    ]
    assert detect_languages(texts).tolist() == ["en", "de", "es", "en", "en"]
