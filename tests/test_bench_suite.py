"""The benchmark suite's markdown comes from its JSON (machine, versions, revision, load and
one table per section); ``d2scale bench`` refuses an unknown section before running any."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.fixture
def report() -> dict:
    host = {"cpu": "CPU X", "cores": 2, "memory_gib": 8.0, "platform": "Linux",
            "python": "3.11", "git_revision": "abc1234"}  # fmt: skip
    select = {"rows": 1000, "wall_s": 9.5, "peak_rss_gib_max_so_far": 0.5,
              "timings_s": {"read": 0.1, "graph": 7.0, "forward": 0.2, "reverse": 0.1},
              "killed": [{"point": "after-graph", "rerun_wall_s": 2.5, "identical_uids": True,
                          "reused": {"read": True, "graph": True, "forward": False}}]}  # fmt: skip
    return {"host": host, "versions": {"numpy": "2.0"}, "started": "2026-01-01 00:00:00",
            "load_start": {"load_average_1m": 3.5, "busiest": [{"command": "pytest",
                                                                "cpu_percent": 90.0}]},
            "load_end": {"load_average_1m": 2.0},
            "sections": {"select": {"results": [select]}, "knn": {"error": "boom"}}}  # fmt: skip


def test_markdown_has_the_machine_and_a_table_per_section(report):
    from suite_table import render

    text = render(report)
    assert "CPU X, 2 cores" in text and "`abc1234`" in text and "numpy 2.0" in text
    assert "3.5 at the start" in text and "pytest (90% CPU)" in text
    assert "| 1,000 | 9.5 | 0.1 | 7 | 0.2 | 0.1 | 0.5 |" in text
    assert "| 1,000 | after-graph | 9.5 | 2.5 | yes | read, graph |" in text
    assert "## knn\n\nfailed: `boom`" in text
    json.dumps(report)  # what bench.json holds


@pytest.mark.parametrize("flags, message", [
    (("--only", "nope"), "unknown section 'nope'"),
    (("--sizes", "abc"), "--sizes takes pool sizes separated by commas"),
    (("--sizes", "100000,0"), "--sizes must be positive"),
    # checked by d2scale, not by the suite's parser (its usage text and exit status 2)
    (("--baseline-n", "0"), "the 'baseline_n' parameter must be an integer ≥ 1; got 0."),
])  # fmt: skip
def test_bad_sections_and_sizes_are_refused(flags, message):
    argv = [sys.executable, "-m", "d2scale.cli.main", "bench", *flags]
    proc = subprocess.run(argv, capture_output=True, text=True)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1 and message in err[0], err


def test_knn_table_takes_the_fastest_of_several_baselines(report):
    from suite_table import render

    report["sections"] = {"knn": {"params": {"k": 10, "recall_target": 0.95}, "results": [{
        "n": 1000, "d2scale": {"wall_s": 2.0, "recall": 0.96, "nlist": 64},
        "exact_flat": {"wall_s": 30.0},
        "big_batch_search": [{"wall_s": 5.0, "recall": 0.97, "nlist": 32},
                             {"wall_s": 4.0, "recall": 0.955, "nlist": 64}]}]}}  # fmt: skip
    row = render(report).splitlines()[-1]
    assert row == "| 1,000 | 2.0 s (recall 0.96, nlist 64) | 30.0 s | – | 4.0 s (recall 0.955, " \
                  "nlist 64) | – |", row  # fmt: skip
