"""Progress output: tqdm bars on a terminal, periodic plain lines otherwise, ``--quiet``,
``--log-json`` events; ``run.json`` gains peak memory and per-stage rates."""

import io
import json
import os
import re
import subprocess
import sys

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
