"""Stage train: fine-tune the parent (or bootstrap) on the prepared data into a candidate directory.

With `train.devices` above 1 the stage trains data-parallel: it starts one process per device and
waits for them (`launch`); each trains on its share of the data (`ratchet.train.distributed`) and
rank 0 alone writes the candidate. Started by torchrun instead (several nodes), this process is
already one of the ranks, and trains as one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ratchet.atomic import write_text
from ratchet.config import Params, TrainParams, render_params
from ratchet.errors import InputError, RatchetError
from ratchet.stages import prepare
from ratchet.stages._common import fresh_dir, stage_main, workspace_cache
from ratchet.stages.inputs import Cycle
from ratchet.stages.sets import SETS, BatchRef, PreparedSets, open_store
from ratchet.train import distributed
from ratchet.train.checkpoint import SampleLookup, load_checkpoint, save_checkpoint
from ratchet.train.loop import EpochStats, fit
from ratchet.train.memory import Origins
from ratchet.train.model import ModelSpec

if TYPE_CHECKING:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

# what the output directory holds
CHECKPOINT = "checkpoint"  # the candidate: weights, spec, memory, strategy state
HISTORY = "history.json"  # per epoch: loss and training accuracy (no timings: it must hash the same)

# a launched rank's failure, as torch's launcher reads it back (its ProcessFailure): the file it
# names in the rank's environment, the one-line message, and our marks on it
ERROR_FILE = "TORCHELASTIC_ERROR_FILE"
ONE_LINE = "ratchet"  # the message is ratchet's one line (else the launcher's own, or none)
PEER_FAILED = "peer_failed"  # it failed in a collective: most likely because another rank died


def print_epoch(stats: EpochStats) -> None:
    print(
        f"  epoch {stats.epoch:3d}  loss {stats.loss:.4f}  "
        f"train acc {stats.accuracy:.3f}  ({stats.seconds:.2f}s)",
        flush=True,
    )


def initial_spec(params: Params) -> ModelSpec:
    """The architecture a bootstrap builds from params.yaml; its classes come from the first batch."""
    return ModelSpec(
        arch=params.model.arch,
        in_channels=params.data.channels,
        image_size=params.data.image_size,
        width=params.model.width,
        dropout=params.model.dropout,
        norm=params.model.norm,
        classes=(),
    )


def device_count(train: TrainParams) -> int:
    """How many processes train.devices asks for on this machine: auto is every CUDA device when
    there are several (and training is not pinned to the CPU), else one."""
    import torch

    cuda = torch.cuda.device_count() if train.device != "cpu" else 0
    if train.devices == "auto":
        return cuda if cuda > 1 else 1
    if train.devices > 1 and cuda and train.devices > cuda:
        raise InputError(f"train.devices is {train.devices} but this machine has {cuda} CUDA devices")
    return train.devices


def run(prepared: Path, out: Path, params: Params, data: Path, cache: Path | None = None) -> float:
    """Train the candidate; returns the seconds training took: the loop's own, or on several
    devices the whole launch's (starting their processes included). `data`: the data directory
    prepare named the batches in; `cache`: where decoded samples are kept between cycles (None:
    decoded from data/ each time; the samples are the same)."""
    world = distributed.from_env()
    if world is None:
        count = device_count(params.train)
        if count > 1:
            distributed.per_rank_batch(params.train.batch_size, count)  # refused before anything starts
            start = time.perf_counter()
            launch(prepared, out, data, params, count)
            return time.perf_counter() - start
    return train_rank(prepared, out, params, world, data, cache)


def launch(prepared: Path, out: Path, data: Path, params: Params, count: int) -> None:
    """Train on `count` local processes and wait for them; one line when any fails.

    torch's elastic launcher (what torchrun runs), called in this process rather than re-executing
    the stage under torchrun: the stage stays the one process DVC, the CLI or a flow waits on, needs
    no console script on the PATH, and gets a failed rank back as an exception to say in one line.
    Each rank is a fresh `python -m ratchet.stages.train`, the same entry point torchrun starts on
    several nodes, reading these very params from a copy (a cycle passes the workspace's, wherever
    its params.yaml is); not a forked or spawned function, which would re-run the caller's main
    module. The launcher stops the other ranks as soon as one fails: nothing waits on a dead peer.
    Rendezvous on a free local port, as `torchrun --standalone`.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=count,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,  # a failed rank fails the stage: a restart would only fail the same way
        monitor_interval=0.2,
    )
    print(f"training on {count} devices (data-parallel)", flush=True)
    with tempfile.TemporaryDirectory(prefix="ratchet-train-") as tmp:
        params_file = Path(tmp) / "params.yaml"
        write_text(params_file, render_params(params))
        paths = (str(prepared.resolve()), str(out.resolve()), str(data.resolve()))
        args = ("-m", "ratchet.stages.train", "--params", str(params_file), *paths)
        try:
            with _launcher_quiet():
                elastic_launch(config, sys.executable)(*args)
        except ChildFailedError as exc:
            raise RatchetError(_first_failure(exc, count)) from None


@contextmanager
def _launcher_quiet() -> Iterator[None]:
    """The launcher logs every step and a failed rank's whole record, and takes over SIGTERM, SIGINT,
    SIGHUP and SIGQUIT in the main thread to stop its workers: for the launch only. The stage says
    what failed in one line, and the process that called it (the CLI, a flow) gets its own signal
    handlers back."""
    loggers = [
        logger
        for name, logger in logging.root.manager.loggerDict.items()
        if name.startswith("torch.distributed") and isinstance(logger, logging.Logger)
    ]
    levels = [logger.level for logger in loggers]
    signals = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT]
    main_thread = threading.current_thread() is threading.main_thread()
    handlers = [signal.getsignal(s) for s in signals] if main_thread else []
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        for sig, handler in zip(signals, handlers, strict=False):
            signal.signal(sig, handler)


def _first_failure(exc: ChildFailedError, count: int) -> str:
    """The failure that caused the others, earliest first: a rank that failed by itself or was
    killed (the OOM killer, a crash), before one that lost its peer in a collective, before one the
    launcher stopped (SIGTERM) once another had failed."""

    def blame(item: tuple[int, ProcessFailure]) -> tuple[int, int, int]:
        rank, failure = item
        if failure.exitcode < 0:
            order = 2 if failure.signal_name() == "SIGTERM" else 0
        else:
            order = 1 if failure.error_file_data.get(PEER_FAILED) else 0
        return order, failure.timestamp, rank

    rank, failure = min(exc.failures.items(), key=blame)
    message = failure.message if isinstance(failure.message, str) else ""
    if not message or failure.error_file_data.get(ONE_LINE) is None:
        message = (
            f"killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
        )
    return f"training rank {rank} of {count} failed: {message}"


def train_rank(
    prepared: Path,
    out: Path,
    params: Params,
    world: distributed.World | None,
    data: Path,
    cache: Path | None = None,
) -> float:
    """Train alone (`world` None) or as one rank of `world`; rank 0 (or the lone process) writes
    `out` and says what it does, the others only train. Returns the training loop's seconds."""
    lead = world is None or world.lead
    try:
        return _train(prepared, out, params, world, lead, data, cache)
    finally:
        if world is not None:
            distributed.leave()


def sample_lookup(data: Path, cache: Path | None) -> SampleLookup:
    """How a checkpoint's replay memory reads the samples it names: from their batches' train
    splits in `data` (or the stages' `cache`), like the training set, but not held once the memory
    has its rows: history grows, RAM must not."""
    store = open_store(data, cache, hold=False)

    def lookup(batch_id: str, content: str) -> np.ndarray:
        return store.samples(BatchRef(batch_id, content), "train").images

    return lookup


def _train(
    prepared: Path,
    out: Path,
    params: Params,
    world: distributed.World | None,
    lead: bool,
    data: Path,
    cache: Path | None,
) -> float:
    cycle = Cycle.load(prepared / prepare.CYCLE)
    store = open_store(data, cache)
    # the training set prepare named: its batches' train splits, decoded (or from the cache)
    refs = PreparedSets.load(prepared / SETS).train
    shape = (params.data.image_size, params.data.image_size, params.data.channels)
    samples = store.concatenated(refs, "train", shape)
    images, labels = samples.images, samples.labels
    origins = Origins.of_batches(
        [((r.batch_id, r.content), len(store.samples(r, "train").labels)) for r in refs]
    )
    parent = prepared / prepare.PARENT
    start = load_checkpoint(parent, samples=sample_lookup(data, cache)) if parent.is_dir() else None
    pretrained = prepared / prepare.PRETRAINED
    origin = f"version {cycle.parent_version}" if start else "scratch"
    if lead:
        print(f"training {len(labels)} samples from {origin} with {cycle.strategy}", flush=True)
    train = dataclasses.replace(params.train, strategy=cycle.strategy)  # a retrain may override it
    result = fit(
        start,
        initial_spec(params),
        images,
        labels,
        train,
        print_epoch if lead else None,
        str(pretrained) if pretrained.is_file() else None,
        world,
        origins,
    )
    if not lead:
        return result.seconds
    with fresh_dir(out) as tmp:
        save_checkpoint(tmp / CHECKPOINT, result.checkpoint)
        history = [{"epoch": s.epoch, "loss": s.loss, "accuracy": s.accuracy} for s in result.history]
        write_text(tmp / HISTORY, json.dumps(history, indent=1) + "\n")
    where = f"{world.size} x {result.device}" if world is not None else result.device
    print(
        f"trained on {where}: {result.images_processed} images in {result.seconds:.1f}s "
        f"({result.images_processed / max(result.seconds, 1e-9):.0f} images/s)",
        flush=True,
    )
    return result.seconds


def _lost_peer(exc: BaseException) -> bool:
    """Whether a rank failed talking to the others, most likely because another one died: torch's
    own distributed errors, and the plain RuntimeError gloo and nccl raise when a peer is gone."""
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, dist.DistError) or (
        isinstance(exc, RuntimeError) and any(word in text for word in ("gloo", "NCCL", "nccl"))
    )


def main(argv: list[str] | None = None) -> int:
    ranked = distributed.from_env() is not None

    def train(paths: list[Path], params: Params) -> None:
        # a rank decodes its samples from data/ (the same samples): its working directory need not
        # be the workspace, whose cache the lone stage uses
        run(paths[0], paths[1], params, paths[2], None if ranked else workspace_cache())

    error_file = os.environ.get(ERROR_FILE)
    names = ["prepared", "out", "data"]
    if not ranked or not error_file:
        return stage_main("train", names, train, argv)
    # a rank under a launcher: the launcher says which rank failed and why, once, from this file
    try:
        return stage_main("train", names, train, argv, raise_errors=True)
    except Exception as exc:
        lost_peer = _lost_peer(exc)
        if isinstance(exc, RatchetError):
            message, code = str(exc), exc.exit_code
        else:
            if not lost_peer:  # a bug, not the user's doing: the whole story, on this rank's stderr
                traceback.print_exc()
            message, code = f"{type(exc).__name__}: {exc}", 1
        lines = message.strip().splitlines()  # the stage's failure is one line
        record = {
            "message": lines[0] if lines else type(exc).__name__,
            "timestamp": int(time.time()),
            ONE_LINE: True,
            PEER_FAILED: lost_peer,
        }
        Path(error_file).write_text(json.dumps(record))
        return code


if __name__ == "__main__":
    sys.exit(main())
