"""`make repro` on the project's own reference workspace: the stages really run, and the target
fails when the weights they make are not the ones git records.

One run covers both: in a clone whose dvc.lock records other weights for the candidate, the target
must fail, and the only difference it finds must be the candidate's hash.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent


def test_make_repro_fails_when_the_weights_differ_and_only_then(tmp_path: Path) -> None:
    if not (REPO / ".git").exists() or not (VENV / ".installed").is_file():
        pytest.skip("needs the project's git checkout and its Makefile-built .venv")
    # given a clone whose dvc.lock records other weights for the candidate than the stages make
    clone = tmp_path / "project"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    lock = (clone / "dvc.lock").read_text()
    true_md5 = re.search(r"path: artifacts/candidate\n\s+hash: md5\n\s+md5: (\S+)", lock)
    assert true_md5 is not None
    recorded = "0" * 32 + ".dir"
    (clone / "dvc.lock").write_text(lock.replace(true_md5[1], recorded))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run([*git, "commit", "-qam", "other weights on record"], cwd=clone, check=True)

    # when make repro regenerates the data and runs every stage (-o: the venv is built already)
    done = subprocess.run(
        ["make", "-s", "repro", f"VENV={VENV}", "-o", str(VENV / ".installed")],
        cwd=clone,
        env=os.environ | {"PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr

    # then it fails and does not claim a reproduction
    assert done.returncode != 0, output
    assert "reproduced" not in output
    # and what it found differs is the candidate's hash alone: data, prepared data and metrics match
    changed = [
        line
        for line in output.splitlines()
        if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))
    ]
    assert changed and set(changed) == {f"-      md5: {recorded}", f"+      md5: {true_md5[1]}"}, output
