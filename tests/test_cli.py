"""The command line: help everywhere, one clear line and a non-zero exit for every bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ratchet import state
from ratchet.cli import build_parser, main
from ratchet.config import render_params
from ratchet.cycle import NOTHING_PENDING
from ratchet.data import versioning
from ratchet.workspace import init_workspace

SCHEMA1 = (Path(__file__).parent / "fixtures" / "params-schema1.yaml").read_text()

RunRatchet = Callable[..., subprocess.CompletedProcess[str]]
COMMANDS = [
    "init",
    "ingest",
    "retrain",
    "inbox",
    "deploy",
    "worker",
    "status",
    "approve",
    "reject",
    "override",
    "history",
    "requeue",
    "drop",
    "rollback",
    "replay",
    "demo",
    "reference-data",
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-ws")
    init_workspace(root)
    return root


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: ratchet " + command in capsys.readouterr().out


def test_init_is_idempotent(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    head = versioning.head(workspace)
    assert main(["init", str(workspace)]) == 0
    assert "nothing (already a workspace)" in capsys.readouterr().out
    assert versioning.head(workspace) == head
    for path in ("params.yaml", "dvc.yaml", ".dvc/config", ".git"):
        assert (workspace / path).exists()
    assert "../.dvc-storage" in (workspace / ".dvc" / "config").read_text()


def test_missing_workspace_is_one_line_exit_2(tmp_path: Path, run_ratchet: RunRatchet) -> None:
    done = run_ratchet("status", "-w", str(tmp_path / "nowhere"))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "workspace not found" in lines[0]


def test_corrupt_batch_is_refused_whole(workspace: Path, tmp_path: Path, run_ratchet: RunRatchet) -> None:
    folder = tmp_path / "bad"
    (folder / "cat").mkdir(parents=True)
    (folder / "cat" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (folder / "cat" / "b.txt").write_text("hello")
    head = versioning.head(workspace)
    done = run_ratchet("ingest", str(folder), "-w", str(workspace))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "nothing usable" in done.stderr
    assert list((workspace / "data" / "batches").iterdir()) == []
    assert versioning.head(workspace) == head


def test_labels_that_do_not_match_images_are_refused(workspace: Path, tmp_path: Path) -> None:
    npz = tmp_path / "mismatch.npz"
    np.savez(npz, images=np.zeros((5, 8, 8), dtype=np.uint8), labels=np.zeros(4, dtype=np.int64))
    assert main(["ingest", str(npz), "-w", str(workspace)]) == 2
    assert list((workspace / "data" / "batches").iterdir()) == []


def test_unknown_params_key_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "ws"
    init_workspace(root)
    params = root / "params.yaml"
    params.write_text(params.read_text().replace("  lr: ", "  lrr: "))
    assert main(["retrain", "-w", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.lrr" in err[0]


def test_unknown_strategy_is_refused(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["retrain", "-w", str(workspace), "--strategy", "magic"]) == 2
    assert "unknown strategy 'magic'" in capsys.readouterr().err


def test_retrain_with_no_batches_says_so(workspace: Path, run_ratchet: RunRatchet) -> None:
    done = run_ratchet("retrain", "-w", str(workspace))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [NOTHING_PENDING, "nothing new to train on"]


def test_retrain_with_nothing_to_train_on_still_does_plans_housekeeping(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a workspace with no batch, where an earlier command could not push what it committed
    root = tmp_path / "ws"
    init_workspace(root)
    state.directory(root)
    (root / state.UNPUSHED).write_text("cycle abc\n")
    # when retrain finds nothing to train on (answered without the flow)
    assert main(["retrain", "-w", str(root)]) == 0
    # then the push was retried and said, as the flow's plan does, before the usual lines
    assert capsys.readouterr().out.splitlines() == [
        "pushed cycle abc to the DVC remote (an earlier push had not finished)",
        NOTHING_PENDING,
        "nothing new to train on",
    ]
    assert not (root / state.UNPUSHED).exists()


def test_retrain_prints_ratchets_lines_and_keeps_prefects_for_verbose(
    tmp_path: Path, stream_files: dict[str, Path], prefect_server: str, run_ratchet: RunRatchet
) -> None:
    def retrain(*flags: str) -> str:
        # Prefect's console as a user has it (the suite turns it down for its own process)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING_HANDLERS_")}
        done = subprocess.run(
            [sys.executable, "-m", "ratchet.cli", *flags, "retrain", "-w", str(root)],
            env={**env, "PREFECT_API_URL": prefect_server},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    root = tmp_path / "ws"
    init_workspace(root)
    assert run_ratchet("ingest", str(stream_files["digits-0-4"]), "-w", str(root)).returncode == 0
    said = retrain()
    assert "epoch  12" in said and "images/s" in said and "version 1 promoted" in said
    assert "Beginning flow run" not in said and "Finished in state" not in said
    assert "Finished in state Completed" in (root / ".ratchet" / "ratchet.log").read_text()
    # nothing new: answered without Prefect, in the same words the flow used
    done, imported = without_prefect("--verbose", "retrain", "-w", str(root), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [NOTHING_PENDING, "nothing new to train on"]
    assert "ratchet.registry" in imported and "prefect" not in imported
    assert "temporary server" not in done.stderr
    # an ingest and a cycle, with no Prefect API configured: the cycle's steps run directly, and
    # neither command imports Prefect (there is no server to announce the batch to)
    done, imported = without_prefect("ingest", str(stream_files["digits-5-9"]), "-w", str(root), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "ratchet.intake" in imported and "prefect" not in imported
    done, imported = without_prefect("retrain", "-w", str(root), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "ratchet.cycle" in imported and "prefect" not in imported
    assert "epoch  12" in done.stdout and "version 2 promoted" in done.stdout


def without_prefect(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """The real `ratchet ARGS` where nothing names a Prefect API (no PREFECT_* variable, an empty
    Prefect home, no settings file in `cwd`): what it did, and every module it imported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ratchet.cli", *args],
        env=env | {"PREFECT_HOME": str(cwd / "prefect-home")},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done, [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line]


def test_a_cycle_runs_as_a_prefect_flow_only_where_a_prefect_api_is_configured(
    tmp_path: Path,
) -> None:
    code = (
        "import sys; from ratchet import app; print(app.prefect_api_configured(), 'prefect' in sys.modules)"
    )

    def configured(env: dict[str, str]) -> str:
        plain = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        command = [sys.executable, "-c", code]
        done = subprocess.run(command, env=plain | env, cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    home = {"PREFECT_HOME": str(tmp_path / "home")}
    assert configured(home) == "False False"  # nothing names an API: Prefect is not even imported
    assert configured(home | {"PREFECT_API_URL": "http://127.0.0.1:1/api"}) == "True False"
    (tmp_path / "home").mkdir()
    profiles = tmp_path / "home" / "profiles.toml"
    profiles.write_text('active = "team"\n[profiles.team]\nPREFECT_API_URL = "http://127.0.0.1:1/api"\n')
    assert configured(home) == "True True"  # Prefect's own answer, from its active profile
    profiles.write_text(profiles.read_text().replace('active = "team"', 'active = "other"\n[profiles.other]'))
    assert configured(home) == "False True"  # another profile is active: a file is not enough


# ---- init on an existing workspace, init with the image size ---------------------------------


def test_init_adds_the_keys_an_old_params_yaml_lacks_and_nothing_else(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a workspace whose params.yaml is an older one lacking train.seed and gate.min_accuracy,
    # with a value and a comment of the user's
    root = tmp_path / "ws"
    init_workspace(root)
    lines = [ln for ln in SCHEMA1.splitlines() if not ln.startswith(("  seed:", "  min_accuracy:"))]
    lines[lines.index("  num_epochs: 12")] = "  num_epochs: 3   # our data is small"
    lines.insert(lines.index("gate:") + 1, "  # tuned on the March batches")
    old = "\n".join(lines) + "\n"
    (root / "params.yaml").write_text(old)
    versioning.commit(root, ["params.yaml"], "our params")
    head = versioning.head(root)

    # when init runs on it
    assert main(["init", str(root)]) == 0

    # then it says which keys it added, and added exactly those
    out = capsys.readouterr().out
    added = (
        "schema, registry.tracking_uri, registry.registry_uri, data.max_unpacked_bytes, train.seed, "
        "train.devices, train.threads, train.derpp_alpha, train.derpp_beta, gate.min_accuracy, review, "
        "inbox, remotes, schedule"
    )
    assert f"params.yaml: added {added}" in out
    new = (root / "params.yaml").read_text()
    old_lines, new_lines = old.splitlines(), new.splitlines()
    it = iter(new_lines)
    assert all(line in it for line in old_lines)  # the user's lines are all there, in order, unchanged
    keys = [
        ln.split(":")[0].strip()
        for ln in new_lines
        if ln not in old_lines and not ln.lstrip().startswith("#")
    ]
    assert keys == [
        "schema",
        "tracking_uri",
        "registry_uri",
        "max_unpacked_bytes",
        "seed",
        "devices",
        "threads",
        "derpp_alpha",
        "derpp_beta",
        "min_accuracy",
        "review",
        "approval",
        "wait_minutes",
        "inbox",
        "path",
        "ready_marker",
        "remotes",
        "dvc",
        "git",
        "schedule",
        "cron",
        "timezone",
        "debounce_seconds",
        "work_pool",
    ]
    params = init_workspace(root)[0].params()
    assert params.train.num_epochs == 3 and params.train.seed == 0 and params.gate.min_accuracy == 0.6
    # committed
    assert versioning.head(root) != head
    assert versioning.git(root, "status", "--porcelain", "params.yaml") == ""

    # and a second init adds nothing
    head = versioning.head(root)
    assert main(["init", str(root)]) == 0
    assert "nothing (already a workspace)" in capsys.readouterr().out
    assert (root / "params.yaml").read_text() == new
    assert versioning.head(root) == head


def test_init_with_image_size_and_channels_writes_them_into_a_new_params_yaml(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    ws, done = init_workspace(root, model_name="fashion", image_size=28, channels=3)
    assert done and done[0].startswith("created ") and "params.yaml" in done[0]
    p = ws.params()
    assert (p.data.image_size, p.data.channels, p.registry.model_name) == (28, 3, "fashion")
    text = ws.params_path.read_text()
    assert "  image_size: 28 " in text and "  channels: 3 " in text
    # the rest is the rendered default, comments included
    default = render_params().splitlines()
    assert sum(line not in default for line in text.splitlines()) == 3
    # the same values again are fine
    init_workspace(root, image_size=28, channels=3)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--image-size", "32"], "already uses data.image_size 28; edit params.yaml instead"),
        (["--channels", "1"], "already uses data.channels 3; edit params.yaml instead"),
    ],
)
def test_init_refuses_another_image_size_for_an_existing_workspace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    root = tmp_path / "ws"
    init_workspace(root, image_size=28, channels=3)
    before = (root / "params.yaml").read_text()
    assert main(["init", str(root), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert (root / "params.yaml").read_text() == before


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--image-size", "4"], "data.image_size must be at least 8, got 4"),
        (["--channels", "2"], "data.channels must be 1 or 3, got 2"),
    ],
)
def test_init_refuses_an_invalid_image_size_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    root = tmp_path / "ws"
    assert main(["init", str(root), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not root.exists()
