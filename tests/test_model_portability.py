"""A registered version loads and predicts where ratchet is not installed.

One version is trained through the real cycle; then a fresh virtual environment gets nothing but the
requirements the version declares, and loads `models:/<name>@champion` from the workspace's store.
Installing torch dominates the run (about a minute and a half on two cores).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ratchet import app
from ratchet.data.digits import StreamBatch
from ratchet.registry import open_registry
from ratchet.workspace import init_workspace, open_workspace

pytestmark = pytest.mark.usefixtures("prefect_server")

LOAD_AND_PREDICT = """
import json, sys
import mlflow, numpy as np
out = mlflow.pyfunc.load_model(sys.argv[1]).predict(np.load(sys.argv[2]))
import ratchet
print(json.dumps({"labels": out["label"].astype(str).tolist(), "ratchet": ratchet.__file__}))
"""


@pytest.fixture()
def venv_dir(tmp_path: Path) -> Iterator[Path]:
    """Where the fresh environment goes; removed afterwards (torch makes it gigabytes)."""
    path = tmp_path / "venv"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def bare_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that would let the child find ratchet or our venv."""
    drop = {
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "VIRTUAL_ENV",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_REGISTRY_URI",
    }
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return env | {"PYTHONNOUSERSITE": "1", "PYTHONSAFEPATH": "1"} | extra


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False)


def test_the_champion_loads_and_predicts_with_only_its_declared_requirements(
    tmp_path: Path, venv_dir: Path, stream_files: dict[str, Path], stream: list[StreamBatch]
) -> None:
    import mlflow

    root = tmp_path / "ws"
    init_workspace(root, model_name="portable-it")
    app.ingest(root, stream_files["digits-0-4"])
    outcome = app.retrain(root)
    assert outcome is not None and outcome.action == "promoted", outcome
    registry = open_registry(open_workspace(root))
    uri = f"models:/{registry.name}@champion"

    images = stream[0].images[:32, :, :, None]  # uint8 (N, H, W, C), as the signature says
    probe = tmp_path / "probe.npy"
    np.save(probe, images)
    model = mlflow.pyfunc.load_model(uri)
    expected = model.predict(images)["label"].astype(str).tolist()
    # in minibatches of any size, the same predictions (batch_size bounds memory, nothing else)
    small = model.predict(images, params={"batch_size": 5})
    assert small["label"].astype(str).tolist() == expected and len(small) == len(images)

    requirements = Path(mlflow.pyfunc.get_model_dependencies(uri, format="pip"))
    created = run([sys.executable, "-m", "venv", str(venv_dir)], tmp_path, bare_env())
    assert created.returncode == 0, created.stderr
    python = str(venv_dir / "bin" / "python")
    # exactly what the version declares; --no-compile only skips writing .pyc files
    installed = run(
        [python, "-m", "pip", "install", "--quiet", "--no-compile", "-r", str(requirements)],
        tmp_path,
        bare_env(),
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr

    without = run([python, "-c", "import ratchet"], tmp_path, bare_env())
    assert without.returncode != 0 and "No module named 'ratchet'" in without.stderr, (
        "ratchet is importable in the fresh environment: the test proves nothing"
    )

    loaded = run(
        [python, "-c", LOAD_AND_PREDICT, uri, str(probe)],
        tmp_path,
        bare_env(MLFLOW_TRACKING_URI=registry.tracking_uri),
    )
    assert loaded.returncode == 0, loaded.stderr[-4000:]
    result = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert result["labels"] == expected
    # the ratchet code that ran is the copy stored with the version
    assert Path(result["ratchet"]).parent.parent.name == "code", result["ratchet"]
