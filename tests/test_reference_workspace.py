"""The repository root is a workspace: its data version regenerates offline and `dvc repro` matches git."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ratchet.cli import main
from ratchet.data import versioning

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    target = tmp_path_factory.mktemp("clone") / "ratchet"
    subprocess.run(["git", "clone", "-q", str(REPO), str(target)], check=True)
    return target


def test_reference_data_regenerates_the_committed_data_version(clone: Path) -> None:
    assert not (clone / "data").exists()
    assert main(["reference-data", str(clone)]) == 0
    status = versioning.dvc(clone, "status", "data.dvc")
    assert "up to date" in status, status
    # and doing it again changes nothing
    assert main(["reference-data", str(clone)]) == 0
    assert "up to date" in versioning.dvc(clone, "status", "data.dvc")


def test_dvc_repro_reproduces_the_committed_metrics(clone: Path) -> None:
    if not (clone / "data").exists():
        assert main(["reference-data", str(clone)]) == 0
    versioning.dvc(clone, "repro")
    changed = versioning.git(clone, "status", "--porcelain", "--", "artifacts/eval", "dvc.lock")
    assert changed.strip() == "", changed
