"""``--method`` / ``--then``: a chain equals running its steps one by one."""

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from d2scale.errors import D2ScaleError
from d2scale.methods import registry
from d2scale.params import SelectParams
from d2scale.pool.uids import decode_uids
from d2scale.progress import Progress
from d2scale.select.chain import chain_steps, unread_flags
from d2scale.select.pipeline import select


@pytest.fixture(autouse=True)
def keep_even_method(monkeypatch):
    monkeypatch.setitem(registry.METHODS, "keep-even", "keep_even")


def run(pool, out, **kw) -> dict:
    params = SelectParams(metadata_dir=str(pool), out=str(out), index="exact", workers=2, **kw)
    return select(params, Progress(quiet=True))


def even_rows_pool(pool: str, out: str) -> None:
    """The pool's rows at even global positions, as a pool of its own (same shards)."""
    start = 0
    os.makedirs(out)
    for name in sorted(f[:-8] for f in os.listdir(pool) if f.endswith(".parquet")):
        table = pq.read_table(os.path.join(pool, f"{name}.parquet"))
        keep = np.flatnonzero((np.arange(table.num_rows) + start) % 2 == 0)
        start += table.num_rows
        pq.write_table(table.take(keep), os.path.join(out, f"{name}.parquet"))
        with np.load(os.path.join(pool, f"{name}.npz")) as z:
            np.savez(os.path.join(out, f"{name}.npz"), **{k: z[k][keep] for k in z.files})


def test_chain_equals_its_steps_one_by_one(small_pool, tmp_path):
    record = run(small_pool, tmp_path / "chain", method="keep-even", then=["d2:0.2"])
    assert [s["method"] for s in record["steps"]] == ["keep-even", "d2"]
    assert [s["kept"] for s in record["steps"]] == [1500, 600]
    assert record["counts"]["selected"] == {"0.2": 600}
    even_rows_pool(small_pool, str(tmp_path / "even"))
    run(tmp_path / "even", tmp_path / "direct", fraction=[0.4])  # 0.4 of 1,500 = 0.2 of 3,000
    chained = set(decode_uids(np.load(tmp_path / "chain" / "uids.npy")))
    direct = set(decode_uids(np.load(tmp_path / "direct" / "uids.npy")))
    assert chained == direct
    ranking = pq.read_table(tmp_path / "chain" / "ranking.parquet")
    assert ranking.num_rows == 3000 and ranking["forward_score"].null_count == 0
    assert np.isnan(ranking["forward_score"].to_numpy()[1::2]).all()


def test_step_errors_are_one_sentence(small_pool, tmp_path):
    with pytest.raises(D2ScaleError, match="'method' parameter must be one of"):
        chain_steps(SelectParams(method="nope"))
    with pytest.raises(D2ScaleError, match="'method' parameter must be one of"):
        chain_steps(SelectParams(then=["nope:0.2"]))
    with pytest.raises(D2ScaleError, match="options are KEY=VALUE"):
        SelectParams(then=["d2:eps="]).validate()
    with pytest.raises(D2ScaleError, match="keeps 1,500 of 3,000 rows, fewer than the 2,400"):
        run(small_pool, tmp_path, method="keep-even", fraction=[0.8])


@pytest.mark.parametrize(
    ("then", "fraction"),
    [(["random:0.5", "random:0.7"], None), (["random:0.5", "random"], [0.3, 0.7])],
)
def test_a_step_asked_for_more_than_an_earlier_keeps_is_refused_first(
    small_pool, tmp_path, then, fraction
):
    """Refused with the steps, before any work (it was refused when the later step ran)."""
    with pytest.raises(D2ScaleError, match="asked for 0.7 of the pool, more than the 0.5"):
        run(small_pool, tmp_path / "o", method="random", then=then, fraction=fraction)
    assert not (tmp_path / "o").exists()
    run(small_pool, tmp_path / "f", method="random", then=["random:0.5", "basic:0.7"])


def test_d2_step_options_override_the_global_flags(small_pool, tmp_path):
    """``--then d2:0.3:gamma=0.01`` selects as ``--method d2 --gamma 0.01`` on the same rows
    (clip-score without a threshold keeps every row), and differs from the default γ."""
    chained = run(small_pool, tmp_path / "chain", method="clip-score", then=["d2:0.3:gamma=0.01"])
    direct = run(small_pool, tmp_path / "direct", gamma=0.01, fraction=[0.3])
    run(small_pool, tmp_path / "default", fraction=[0.3])
    uids = {name: set(decode_uids(np.load(tmp_path / name / "uids.npy")))
            for name in ("chain", "direct", "default")}  # fmt: skip
    assert uids["chain"] == uids["direct"] != uids["default"]
    assert chained["steps"][-1]["message_passing"]["gamma"] == 0.01
    assert chained["steps"][-1]["options"] == {"gamma": "0.01"}
    assert direct["method"]["message_passing"]["gamma"] == 0.01


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ("d2:0.3:bogus=1", "method 'd2' takes gamma"),
        ("d2:0.3:gamma=-1", "method 'd2': the 'gamma' parameter must be"),
        ("d2:0.3:mode=max", "method 'd2': the 'mode' parameter must be one of sum, product"),
        ("random:0.3:bogus=1", "method 'random' takes seed"),
        ("semdedup:0.3:clusters=x,eps=0.1", "option clusters must be an integer"),
        ("clip-score:0.3:bogus=1", "method 'clip-score' takes threshold, column"),
        ("random:0.3:seed=-1", "method 'random': the 'seed' parameter must be an integer in"),
        ("semdedup:0.3:eps=0.1,iterations=0", "method 'semdedup': option iterations must be"),
        ("image-clustering:0.3:targets=t.npy,iterations=-1", "option iterations must be ≥ 1"),
        ("d2:0.3:gamma=0.5,gamma=0.7", "gives the option gamma twice"),  # one would be lost
        ("d2:0.3:0.5", "gives two fractions"),
    ],
)
def test_bad_step_options_stop_before_any_work(step, message, tmp_path):
    """Every step is checked up front: nothing is written, not even ``OUT/work``."""
    params = SelectParams(out=str(tmp_path / "out"), then=[step])
    with pytest.raises(D2ScaleError, match=message):
        select(params, Progress(quiet=True))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("given", "warnings"),
    [
        ({"method": "random", "gamma": 0.5, "n_neighbors": 7},
         ["--n-neighbors 7 changes nothing: no step of --method/--then reads it",
          "--gamma 0.5 changes nothing: no step of --method/--then reads it"]),
        ({"method": "d2-reference", "mode": "product", "gamma": 0.5},
         ["--mode product changes nothing: no step of --method/--then reads it"]),
        ({"method": "d2:gamma=0.5", "gamma": 0.7},
         ["--gamma 0.7 changes nothing: every step that reads it sets its own gamma"]),
        ({"index": "exact", "recall": 0.5},
         ["--recall 0.5 changes nothing: an exact index has no recall target"]),
        ({"graph": "g", "index": "ivf"},
         ["--index ivf changes nothing: the --graph given is used as it was built"]),
        ({"method": "random", "then": ["d2:0.1"], "gamma": 0.7, "index": "ivf"}, []),
        ({"method": "random", "feature_type": "text"},
         ["--feature-type text changes nothing: no step of --method/--then reads it"]),
        ({"method": "semdedup:eps=0.1", "feature_type": "text"}, []),
    ],
)  # fmt: skip
def test_a_flag_no_step_reads_is_named(given, warnings):
    params = SelectParams(**given)
    assert unread_flags(chain_steps(params), params) == warnings


def test_a_flag_no_step_reads_is_a_warning_recorded_in_run_json(small_pool, tmp_path):
    """``--method random --gamma 0.5`` selects what ``--method random`` does, and says so."""
    lines = []
    record = select(SelectParams(metadata_dir=str(small_pool), out=str(tmp_path), workers=2,
                                 method="random", gamma=0.5), lines.append)  # fmt: skip
    warning = "--gamma 0.5 changes nothing: no step of --method/--then reads it"
    assert record["ignored_flags"] == [warning] and f"warning: {warning}" in lines
    assert json.loads((tmp_path / "run.json").read_text())["ignored_flags"] == [warning]


def test_a_given_graph_serves_the_first_step_and_later_steps_without_a_graph(small_pool, tmp_path):
    """``--graph G --method d2 --then random:0.5 --then random:0.2``: only d2 reads the
    graph (the whole pool's); the later steps on fewer rows need none."""
    first = run(small_pool, tmp_path / "first", fraction=[0.3])
    graph = first["stages"]["graph"]["directory"]
    record = select(SelectParams(metadata_dir=str(small_pool), out=str(tmp_path / "chain"),
                                 workers=2, graph=graph, then=["random:0.5", "random:0.2"]),
                    Progress(quiet=True))  # fmt: skip
    assert record["counts"]["selected"] == {"0.2": 600}
    assert record["stages"]["graph"]["reused"] is True
