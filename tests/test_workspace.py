"""dvc.yaml is the one home of the stages' paths: the workspace reads them from there."""

from __future__ import annotations

from pathlib import Path

import pytest

from ratchet.errors import InputError
from ratchet.workspace import Workspace, init_workspace, template


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return init_workspace(tmp_path_factory.mktemp("ws"))[0]


def test_stage_paths_come_from_the_stage_command_lines(ws: Workspace) -> None:
    paths = ws.stage_paths()
    assert (paths.cycle, paths.data) == (ws.root / "cycle.json", ws.root / "data")
    assert (paths.prepared, paths.candidate, paths.eval) == tuple(
        ws.root / "artifacts" / name for name in ("prepared", "candidate", "eval")
    )
    assert paths.parent == ws.root / "parent"
    assert paths.committed() == [
        ws.root / "cycle.json",
        ws.root / "parent.dvc",
        ws.root / ".gitignore",
        ws.root / "artifacts",
    ]


def test_moving_the_outputs_in_dvc_yaml_moves_them_for_the_flow(tmp_path: Path, ws: Workspace) -> None:
    moved = Workspace(tmp_path)
    (tmp_path / "dvc.yaml").write_text(template("dvc.yaml").replace("artifacts/", "out/"))
    paths = moved.stage_paths()
    assert (paths.prepared, paths.candidate, paths.eval) == tuple(
        tmp_path / "out" / name for name in ("prepared", "candidate", "eval")
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("train artifacts/prepared", "train artifacts/other"), "do not pass their outputs on"),
        (("prepare cycle.json data", "prepare cycle.json"), "passes 3 paths, not 4"),
        (("cycle.json data parent", "cycle.json batches parent"), "prepare reads batches"),
        (("  evaluate:", "  judge:"), "does not name the stages' paths"),
        (("artifacts/candidate data", "artifacts/candidate batches"), "must read the data prepare reads"),
    ],
)
def test_a_dvc_yaml_that_does_not_fit_is_one_line(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    text = template("dvc.yaml")
    assert edit[0] in text
    (tmp_path / "dvc.yaml").write_text(text.replace(*edit))
    with pytest.raises(InputError, match=message) as err:
        Workspace(tmp_path).stage_paths()
    assert "\n" not in str(err.value)
