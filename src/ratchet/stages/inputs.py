"""What a cycle trains on and from, as the stages read it: cycle.json, and the code that ran it."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import ratchet
from ratchet.atomic import write_text
from ratchet.errors import InputError

# what the parent path holds for a cycle without a parent: DVC needs the dependency to exist
NO_PARENT = "no-parent.txt"
NO_PARENT_TEXT = "This cycle has no parent: it trains from scratch, or from model.pretrained.\n"


@dataclass(frozen=True)
class CodeVersion:
    version: str  # ratchet's release
    source: str  # hash of the installed package's source files: changes with any edit


@functools.cache
def code_version() -> CodeVersion:
    """This process's ratchet. The hash covers every file of the package (templates included, flows
    and caches not), so two checkouts of the same commit agree and any edit changes it."""
    root = Path(ratchet.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and "__pycache__" not in rel.parts and rel.parts[0] != "flows":
            digest.update(rel.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return CodeVersion(version=ratchet.__version__, source=digest.hexdigest()[:12])


def content_hash(directory: Path) -> str:
    """sha256 over every file under `directory`, each by its relative path and bytes, in path order:
    the same files give the same hash wherever they were downloaded or checked out."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@dataclass(frozen=True)
class Cycle:
    """What a cycle trains on and from: committed as cycle.json, the input `dvc repro` replays."""

    cycle_id: str
    new_batches: tuple[str, ...]  # trained on now; their held-out data is "new"
    old_batches: tuple[str, ...]  # everything the parent learned; their held-out data is "old"
    parent_version: str | None  # registry version fine-tuned from; None bootstraps from scratch
    strategy: str
    code: CodeVersion | None = None  # the ratchet that planned it (None: planned before it was recorded)
    # content_hash of the parent's checkpoint directory, as DVC tracks it beside cycle.json; None
    # for a bootstrap, and in cycles planned before the parent was tracked
    parent_hash: str | None = None

    def to_json(self) -> dict[str, object]:
        doc = dataclasses.asdict(self)
        # cycles planned before these were recorded (and bootstraps, for parent_hash) read back the same
        for key in ("code", "parent_hash"):
            if doc[key] is None:
                del doc[key]
        return doc

    @staticmethod
    def load(path: Path) -> Cycle:
        if not path.is_file():
            raise InputError(f"no cycle to reproduce: {path} is missing (run `ratchet retrain` first)")
        raw = json.loads(path.read_text())
        code = raw.get("code")
        return Cycle(
            cycle_id=str(raw["cycle_id"]),
            new_batches=tuple(raw["new_batches"]),
            old_batches=tuple(raw["old_batches"]),
            parent_version=raw["parent_version"],
            strategy=str(raw["strategy"]),
            code=CodeVersion(version=str(code["version"]), source=str(code["source"])) if code else None,
            parent_hash=raw.get("parent_hash"),
        )

    def save(self, path: Path) -> None:
        write_text(path, json.dumps(self.to_json(), indent=1) + "\n")

    def code_note(self) -> str | None:
        """A line to print when this process is not the ratchet that planned the cycle."""
        mine = code_version()
        if self.code is None or self.code == mine:
            return None
        return (
            f"note: cycle {self.cycle_id} was planned by ratchet {self.code.version} (source "
            f"{self.code.source}); this is {mine.version} (source {mine.source}): results may differ"
        )
