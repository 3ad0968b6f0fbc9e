"""``report.html`` is self-contained (every figure a base64 PNG, nothing fetched), the PNGs
are written beside it, ``d2scale report OUT`` rebuilds it, and missing sources leave notes."""

import base64
import re
import shutil
import subprocess

import pytest
from clirun import run_cli

from d2scale.params import SelectParams
from d2scale.progress import Progress
from d2scale.select.pipeline import select
from d2scale.select.report import FIGURES

IMG = re.compile(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'")


@pytest.fixture(scope="module")
def selected(small_pool, tmp_path_factory):
    """An IVF select of the sample pool with ``report=True``."""
    out = tmp_path_factory.mktemp("report")
    params = SelectParams(metadata_dir=small_pool, out=str(out), index="ivf", workers=2,
                          fraction=[0.1, 0.3], report=True)  # fmt: skip
    select(params, Progress(quiet=True))
    return out


def report_cli(out):
    return run_cli("report", out)


def test_report_is_self_contained_with_every_figure(selected):
    page = (selected / "report.html").read_text()
    images = IMG.findall(page)
    assert len(images) == len(FIGURES) == 6
    for name, data in zip(FIGURES, images, strict=True):
        png = (selected / "report" / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and base64.b64decode(data) == png
    # nothing is fetched: no external scripts, styles, images or fonts
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", page)
    assert "<script" not in page and "<link" not in page
    assert "Not drawn" not in page
    assert "3,000 rows" in page and "0.3: 900" in page and "ivf search" in page


def test_report_command_rebuilds_it(selected, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(selected, out, ignore=shutil.ignore_patterns("report*"))
    proc = report_cli(out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out / "report.html")
    assert len(IMG.findall((out / "report.html").read_text())) == 6
    assert sorted(p.name for p in (out / "report").iterdir()) == sorted(
        f"{name}.png" for name in FIGURES
    )


def test_missing_sources_leave_notes(selected, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(selected, out, ignore=shutil.ignore_patterns("report*"))
    # run.json names the graph directory of the original output: point it elsewhere
    run = (out / "run.json").read_text().replace(str(selected / "work"), str(out / "gone"))
    (out / "run.json").write_text(run)
    proc = report_cli(out)
    assert proc.returncode == 0
    page = (out / "report.html").read_text()
    assert len(IMG.findall(page)) == 4
    assert page.count("Not drawn: the graph directory") == 2
    warned = [line for line in proc.stderr.splitlines() if "report: warning:" in line]
    assert len(warned) == 2 and all("not drawn: the graph directory" in w for w in warned)


def test_a_run_on_a_relative_pool_path_is_reported_from_another_directory(
    small_pool, tmp_path, monkeypatch
):
    """run.json records the pool's absolute path: a relative one (kept as given) could not
    be read by `report` run from another directory (a warning, fewer figures)."""
    import json
    import os

    monkeypatch.chdir(tmp_path)
    proc = run_cli("select", "--metadata-dir", os.path.relpath(small_pool), "--out", "o",
                   "--index", "exact", "--quiet")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["params"]["metadata_dir"] == run["input"]["metadata_dir"] == small_pool
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    proc = report_cli(tmp_path / "o")
    assert proc.returncode == 0 and "the pool cannot be read" not in proc.stderr, proc.stderr
    assert proc.stderr.count("warning") == 1  # an exact graph has no IVF lists to draw


def test_exact_graph_has_no_cluster_figure_and_a_rerun_drops_a_stale_report(small_pool, tmp_path):
    params = SelectParams(metadata_dir=small_pool, out=str(tmp_path), index="exact",
                          workers=2, report=True)  # fmt: skip
    select(params, Progress(quiet=True))
    page = (tmp_path / "report.html").read_text()
    assert "Not drawn: the graph was built by exact search" in page
    select(SelectParams(metadata_dir=small_pool, out=str(tmp_path), index="exact", workers=2,
                        gamma=0.5), Progress(quiet=True))  # fmt: skip
    assert not (tmp_path / "report.html").exists() and not (tmp_path / "report").exists()


def test_a_filter_run_without_a_fraction_has_its_report(small_pool, tmp_path):
    """A filter alone keeps every row it passes (``counts.selected`` is ``{"all": n}``):
    ``--report`` wrote the set, then refused its own run.json."""
    params = SelectParams(metadata_dir=small_pool, out=str(tmp_path), workers=2, report=True,
                          method="clip-score:threshold=0.3")  # fmt: skip
    record = select(params, Progress(quiet=True))
    assert list(record["counts"]["selected"]) == ["all"]
    assert "this run built no kNN graph" in (tmp_path / "report.html").read_text()


def test_report_of_a_directory_without_run_json_is_one_line(tmp_path):
    proc = report_cli(tmp_path)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1 and "has no run.json" in err[0], err


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "is not valid JSON"),
        ('["a list"]', "lacks input.metadata_dir"),
        ('{"input": {"metadata_dir": "p", "fingerprint": "f", "rows": 3, "shards": []}}',
         "lacks counts.selected"),
        ('{"input": {"metadata_dir": "p", "fingerprint": "f", "rows": 3, "shards": []}, '
         '"counts": {"selected": {"x": 1}}}', "counts.selected must map fractions"),
    ],
)  # fmt: skip
def test_report_of_a_damaged_run_json_is_one_line(text, message, selected, tmp_path, capsys):
    from d2scale.cli.main import main

    out = tmp_path / "copy"
    shutil.copytree(selected, out, ignore=shutil.ignore_patterns("report*"))
    (out / "run.json").write_text(text)
    assert main(["report", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LOADED = ("<script>addEventListener('load', () => document.body.setAttribute('data-loaded', "
          "[...document.images].filter(i => i.complete && i.naturalWidth > 0).length + '/' + "
          "document.images.length));</script>")  # fmt: skip


def images_loaded_in_chromium(page: str, tmp_path) -> str:
    """``"loaded/total"`` images of ``page`` as headless Chromium renders it."""
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", LOADED + "</body>"))
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
            "--dump-dom", probe.as_uri()]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    found = re.search(r"data-loaded=\"(\d+/\d+)\"", proc.stdout)
    assert found, proc.stderr[-2000:]
    return found.group(1)


def test_a_chain_report_shows_its_steps_and_every_image_loads(small_pool, tmp_path, capsys):
    from d2scale.cli.main import main

    out = tmp_path / "chain"
    argv = ["select", "--metadata-dir", small_pool, "--out", str(out), "--index", "exact",
            "--workers", "2", "--method", "clip-score", "--then", "random:0.6",
            "--then", "d2:0.3", "--report"]  # fmt: skip
    assert main(argv) == 0
    summary = capsys.readouterr().out
    assert summary.strip() == (
        "fraction 0.3: 900 of 3,000 uids (3,000 rows → clip-score 3,000 → random:0.6 1,800 → "
        "d2:0.3 900)"
    )
    page = (out / "report.html").read_text()
    assert "<h2>Steps</h2>" in page and "3,000 rows → clip-score 3,000 → random:0.6" in page
    for cells in (
        "<td>1</td><td>clip-score</td><td>-</td>",
        "<td>2</td><td>random</td><td>0.6",
        "<td>3</td><td>d2</td><td>0.3</td><td>-</td><td>1,800</td><td>900</td>",
    ):
        assert cells in page, cells
    if CHROMIUM is None:
        pytest.skip("chromium is not installed: the images were not loaded in a browser")
    total = len(IMG.findall(page))
    assert total >= 4 and images_loaded_in_chromium(page, tmp_path) == f"{total}/{total}"
