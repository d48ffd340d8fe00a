"""A workspace the previous release made, with a champion it trained, keeps working after the upgrade:
`ratchet retrain` runs on it without anyone editing params.yaml."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from ratchet import app
from ratchet.workspace import LEGACY_PIPELINES, Workspace, open_workspace, template

REPO = Path(__file__).resolve().parents[1]
# the last commit before strategies became units, params gained defaults and dvc.yaml named paths
PREVIOUS_RELEASE = "7cb6c23377209eeea7c23a95c1b30fb913836ea8"


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """That release's source, importable on its own (its flows inside the package, as a wheel has them)."""
    found = subprocess.run(
        ["git", "-C", str(REPO), "cat-file", "-e", f"{PREVIOUS_RELEASE}^{{commit}}"], check=False
    )
    if found.returncode != 0:
        pytest.skip("the previous release is not in this checkout's history")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", PREVIOUS_RELEASE, "src", "flows"], capture_output=True, check=True
    ).stdout
    target = tmp_path_factory.mktemp("previous")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    shutil.copytree(target / "flows", target / "src" / "ratchet" / "flows")
    return target / "src"


def test_a_workspace_of_the_previous_release_retrains_after_the_upgrade(
    previous_release: Path, prefect_server: str, stream_files: dict[str, Path], tmp_path: Path
) -> None:
    root = tmp_path / "ws"

    def previous(*args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(previous_release), "PREFECT_API_URL": prefect_server}
        done = subprocess.run(
            [sys.executable, "-m", "ratchet.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert (
            str(previous_release)
            in subprocess.run(
                [sys.executable, "-c", "import ratchet; print(ratchet.__file__)"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )  # the child really ran the previous release

    # given a workspace the previous release created, fed and trained a champion in
    previous("init", str(root), "--model-name", "upgraded")
    previous("ingest", str(stream_files["digits-0-4"]), "-w", str(root))
    previous("retrain", "-w", str(root))
    params_before = (root / "params.yaml").read_bytes()
    assert b"schema" not in params_before and b"derpp" not in params_before

    # when this release ingests the next batch and retrains
    app.ingest(root, stream_files["digits-5-9"])
    outcome = app.retrain(root)

    # then the cycle continues from the old champion, params.yaml untouched, dvc.yaml upgraded
    assert outcome is not None and outcome.parent == "1"
    assert outcome.action == "promoted", outcome.reasons
    assert (root / "params.yaml").read_bytes() == params_before
    ws = open_workspace(root)
    assert ws.stage_paths().prepared == root / "artifacts" / "prepared"
    champion = app.status(root).champion
    assert champion is not None and champion.version == outcome.version
    assert champion.tag("code_source")  # the new version names the code that made it


def test_the_previous_release_dvc_yaml_is_upgraded_and_a_hand_edited_one_is_not(tmp_path: Path) -> None:
    previous = subprocess.run(
        [
            "git",
            "-C",
            str(REPO),
            "show",
            "7cb6c23377209eeea7c23a95c1b30fb913836ea8:src/ratchet/templates/dvc.yaml",
        ],
        capture_output=True,
        check=False,
    )
    if previous.returncode != 0:
        pytest.skip("the previous release is not in this checkout's history")
    assert hashlib.sha256(previous.stdout).hexdigest() in LEGACY_PIPELINES
    ws = Workspace(tmp_path)
    (tmp_path / "dvc.yaml").write_bytes(previous.stdout)
    assert ws.upgrade_pipeline()
    assert (tmp_path / "dvc.yaml").read_text() == template("dvc.yaml")
    assert not ws.upgrade_pipeline()  # nothing left to do

    edited = previous.stdout.replace(b"cmd: python", b"cmd: nice python")
    (tmp_path / "dvc.yaml").write_bytes(edited)
    assert not ws.upgrade_pipeline()
    assert (tmp_path / "dvc.yaml").read_bytes() == edited
