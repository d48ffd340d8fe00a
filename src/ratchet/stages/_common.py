"""What every stage entry point shares: paths come on argv (dvc.yaml names them), params from
params.yaml in the working directory (where DVC reads the params it tracks), errors are one line."""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ratchet.config import Params, load_params
from ratchet.errors import RatchetError

PARAMS_FILE = Path("params.yaml")


def stage_main(
    name: str,
    paths: list[str],
    run: Callable[[list[Path], Params], object],
    argv: list[str] | None,
    raise_errors: bool = False,
) -> int:
    """`raise_errors`: a RatchetError propagates instead of being printed (a caller reports it)."""
    parser = argparse.ArgumentParser(
        prog=f"python -m ratchet.stages.{name}", description="run from the workspace root, as dvc.yaml does"
    )
    for path in paths:
        parser.add_argument(path, type=Path)
    parser.add_argument(
        "--params", type=Path, default=PARAMS_FILE, help="default: params.yaml, the file DVC tracks"
    )
    args = parser.parse_args(argv)
    try:
        run([getattr(args, p) for p in paths], load_params(args.params))
    except RatchetError as exc:
        if raise_errors:
            raise
        print(f"ratchet {name}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


@contextmanager
def fresh_dir(path: Path) -> Iterator[Path]:
    """Build a stage output in a temp dir, then swap it in: a crash never leaves half an output."""
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def save_arrays(path: Path, images: np.ndarray, labels: np.ndarray, batches: np.ndarray) -> None:
    """Samples with their class names and the id of the batch each came from."""
    with path.open("wb") as f:
        np.savez(f, images=images, labels=labels.astype(str), batches=batches.astype(str))


def load_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return npz["images"], npz["labels"]


def load_batch_ids(path: Path) -> np.ndarray | None:
    """The batch id of each sample of `path`; None for a file written before they were recorded."""
    with np.load(path, allow_pickle=False) as npz:
        return npz["batches"] if "batches" in npz.files else None
