"""Shared fixtures of the vision tests: one torch thread, tiny CIFAR-format archives."""

from __future__ import annotations

import pytest
from cifar_archive import write_cifar

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def cifar_dir(tmp_path) -> str:
    return write_cifar(str(tmp_path / "cifar"))
