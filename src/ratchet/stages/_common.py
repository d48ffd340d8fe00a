"""What every stage entry point shares: paths come on argv (dvc.yaml names them), params from
params.yaml in the working directory (where DVC reads the params it tracks), the cache from the
workspace's `.ratchet/` there too, errors are one line."""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ratchet import state
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


def workspace_cache() -> Path:
    """The stages' cache of the workspace the stage runs in (the working directory, as for params)."""
    return state.cache(Path("."))


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
