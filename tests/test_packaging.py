"""A plain (non-editable) install must carry cli/ and kernels/ as d2scale.cli / d2scale.kernels."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = (
    "d2scale/cli/main.py",
    "d2scale/kernels/__init__.py",
    "d2scale/kernels/forward.cu",
    "d2scale/kernels/reverse.cu",
    "d2scale/select/pipeline.py",
) + tuple(  # every package of the source tree, so a new one cannot be left out of the wheel
    str(init.relative_to(ROOT)) for init in sorted((ROOT / "d2scale").glob("**/__init__.py"))
)


def test_wheel_contains_and_imports_every_package(tmp_path):
    cmd = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation"]
    subprocess.run([*cmd, "-q", "-w", str(tmp_path)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("d2scale-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        assert "d2scale = d2scale.cli.main:main" in z.read(entry).decode()
        z.extractall(site)
    assert set(EXPECTED) <= names
    code = (
        f"import sys; sys.path.insert(0, {str(site)!r}); import d2scale;"
        f"assert d2scale.__file__.startswith({str(site)!r}), d2scale.__file__;"
        "import d2scale.kernels, d2scale.select.pipeline; from d2scale.cli.main import main;"
        "raise SystemExit(main(['--version']))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("d2scale ")
