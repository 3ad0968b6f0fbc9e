"""Progress output: tqdm bars on a terminal, periodic plain lines otherwise, ``--quiet``,
``--log-json`` events; ``run.json`` gains peak memory and per-stage rates."""

import io
import json
import os
import re
import subprocess
import sys

from clirun import run_cli

from d2scale.progress import Progress


def lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line.strip()]


def test_plain_lines_are_periodic_with_rate_and_eta():
    out = io.StringIO()
    progress = Progress(stream=out, tty=False, interval=3600)
    progress("knn graph: search")
    for i in range(1, 11):
        progress(f"knn graph: search: {i}/10 partitions")
    got = lines(out)
    assert got[0].endswith("knn graph: search")
    # the first count and the last one only: the interval (an hour) never elapses
    assert len(got) == 3, got
    assert "1/10 partitions" in got[1] and "10/10 partitions" in got[2]
    assert "partitions/s" in got[2] or "s/partitions" in got[2]


def test_terminal_gets_a_tqdm_bar():
    out = io.StringIO()
    progress = Progress(stream=out, tty=True)
    progress.stage("read", "start")
    for i in range(5):
        progress.count("read", i, 4 if i < 4 else 4, "shards")
    progress.stage("read", "done", 0.5)
    text = out.getvalue()
    assert "4/4" in text and "shards" in text and "\r" in text  # a redrawn bar
    assert "read done in 0.5s" in text


def test_quiet_prints_nothing_but_still_logs_json(tmp_path):
    out = io.StringIO()
    log = tmp_path / "events.jsonl"
    progress = Progress(quiet=True, log_json=str(log), stream=out, tty=False)
    progress.stage("graph", "start")
    progress("knn graph: search: 2/4 partitions")
    progress.stage("graph", "done", 1.25)
    progress.close()
    assert out.getvalue() == ""
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["event"] for e in events] == ["stage", "progress", "stage"]
    assert events[1] | {"label": "knn graph: search", "done": 2, "total": 4} == events[1]
    assert events[2]["status"] == "done" and events[2]["seconds"] == 1.25


def test_quiet_still_prints_warnings_once_and_json_on_stderr_carries_them_itself():
    out = io.StringIO()
    progress = Progress(quiet=True, stream=out, tty=False)
    progress("pool: 1,000 rows")
    progress("warning: --gamma 0.5 changes nothing")
    progress.say("warning: a class emptied", scope="bucket a")
    progress("report: warning: figure not drawn")
    progress.close()
    assert out.getvalue().splitlines() == [
        "d2scale: warning: --gamma 0.5 changes nothing",
        "d2scale: bucket a: warning: a class emptied",
        "d2scale: report: warning: figure not drawn",
    ]
    out = io.StringIO()
    Progress(quiet=True, log_json="-", stream=out, tty=False)("warning: x")
    assert [json.loads(line)["message"] for line in lines(out)] == ["warning: x"]


def test_select_quiet_prints_its_warning(small_pool, tmp_path):
    """``select --quiet`` prints nothing but a degraded result's warning."""
    result = run_cli("select", "--metadata-dir", small_pool, "--method", "random", "--gamma",
                     "0.5", "--fraction", "0.5", "--out", tmp_path / "o", "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "d2scale: warning: --gamma 0.5 changes nothing: no step of --method/--then reads it"
    ]


def test_log_json_dash_replaces_the_human_lines():
    out = io.StringIO()
    progress = Progress(log_json="-", stream=out, tty=False)
    progress("hello")
    assert [json.loads(line)["message"] for line in lines(out)] == ["hello"]


def test_select_cli_logs_events_and_records_memory_rates_dashboard(small_pool, tmp_path):
    log = tmp_path / "events.jsonl"
    argv = [sys.executable, "-m", "d2scale.cli.main", "select", "--metadata-dir", small_pool,
            "--out", str(tmp_path / "out"), "--index", "exact", "--workers", "2",
            "--log-json", str(log)]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # stderr is a pipe: plain lines, counted steps with their meter
    assert re.search(r"\] knn graph: [^\n]*: (\d+)/\1 [^\n]*<00:00", proc.stderr), proc.stderr
    assert "\r" not in proc.stderr and "read done in" in proc.stderr
    events = [json.loads(line) for line in log.read_text().splitlines()]
    done = [e["stage"] for e in events if e["event"] == "stage" and e["status"] == "done"]
    assert done == ["read", "graph", "forward", "reverse"]
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["cluster"]["peak_rss_bytes_driver"] > 50 * 2**20
    assert record["cluster"]["dashboard"] is None  # the local cluster serves none
    assert set(record["rates"]) == {"read", "graph", "forward", "reverse"}
    assert record["rates"]["forward"]["rows_per_s"] > 0
    quiet = subprocess.run([*argv[:-2], "--quiet"], capture_output=True, text=True)
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == ""
    assert os.path.exists(tmp_path / "out" / "uids.npy")


def test_a_count_without_a_total_until_its_last_call():
    out = io.StringIO()
    progress = Progress(stream=out, tty=False, interval=0.0)
    for n in (10, 20):
        progress.count("read a.tar", n, None, "samples")
    progress.count("read a.tar", 25, 25, "samples")
    got = lines(out)
    assert "read a.tar: 10 samples [" in got[0] and "read a.tar: 25/25 samples" in got[2]
    tty = io.StringIO()
    progress = Progress(stream=tty, tty=True)
    progress.count("read a.tar", 10, None, "samples")
    progress.count("read a.tar", 25, 25, "samples")
    assert "25/25" in tty.getvalue() and not progress.bars


def test_heartbeat_repeats_the_running_step_with_its_count_and_unit():
    import time

    out = io.StringIO()
    progress = Progress(log_json="-", stream=out, tty=False, heartbeat=0.2)
    progress.stage("graph", "start")
    progress.count("knn graph: assign", 1, 4, "partitions")
    time.sleep(0.7)
    progress.close()
    time.sleep(0.3)  # closed: no more beats
    events = [json.loads(line) for line in lines(out)]
    beats = [e for e in events if e["event"] == "heartbeat"]
    assert len(beats) >= 2 and len(events) == 2 + len(beats), events
    first = beats[0]
    assert first | {"label": "knn graph: assign", "done": 1, "total": 4,
                    "unit": "partitions"} == first  # fmt: skip
    assert first["seconds"] >= 0.2 and beats[-1]["seconds"] > first["seconds"]
    gaps = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(events[:-1], events[1:], strict=True)]
    assert max(gaps) < 1.0, gaps  # the beat is every 0.2 s; slack for a loaded machine


def test_heartbeat_line_names_an_uncounted_step():
    import time

    out = io.StringIO()
    progress = Progress(stream=out, tty=False, heartbeat=0.2)
    progress("knn graph: train: k-means of 8,192 rows into 256 lists")
    time.sleep(0.35)
    progress.close()
    got = lines(out)
    assert re.search(r"knn graph: train: k-means of 8,192 rows into 256 lists: still working "
                     r"\(\d s\)$", got[1]), got  # fmt: skip


def test_select_events_count_in_units_and_name_chain_steps(small_pool, tmp_path):
    from d2scale.cli.main import main

    log = tmp_path / "events.jsonl"
    argv = ["select", "--metadata-dir", small_pool, "--out", str(tmp_path / "out"), "--index",
            "ivf", "--workers", "2", "--method", "clip-score", "--then", "d2:0.3", "--quiet",
            "--log-json", str(log)]  # fmt: skip
    assert main(argv) == 0
    events = [json.loads(line) for line in log.read_text().splitlines()]
    counted = [e for e in events if e["event"] == "progress"]
    assert counted and all(e["unit"] in ("partitions", "chunks", "blocks") for e in counted)
    assert {e["label"] for e in counted} >= {"knn graph: sample", "knn graph: assign"}
    stages = [(e.get("scope"), e["stage"]) for e in events
              if e["event"] == "stage" and e["status"] != "start"]  # fmt: skip
    assert stages == [(None, "read"), ("step 2/2 (d2)", "graph"), ("step 2/2 (d2)", "forward"),
                      ("step 2/2 (d2)", "reverse")]  # fmt: skip
    steps = [e["message"] for e in events if e["event"] == "message" and "to keep" in e["message"]]
    assert steps == ["step 1/2 (clip-score): 3,000 rows in, 3,000 to keep",
                     "step 2/2 (d2): 3,000 rows in, 900 to keep"]  # fmt: skip
    assert any(e.get("message", "").startswith("knn graph: train: k-means of") for e in events)
