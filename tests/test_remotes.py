"""DVC remotes over S3 and SSH, against real servers on 127.0.0.1 (tests/services.py): what
`ratchet ingest` and `ratchet retrain` push reaches the server, a clone elsewhere pulls it back
identical, and an unreachable remote leaves the ingest committed and says so in one line.

The remote's URL goes into the committed .dvc/config; its endpoint, key file and credentials go
where a user puts them, never into a committed file: the environment (AWS_*) or the git-ignored
.dvc/config.local (`dvc remote modify --local`).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from ratchet.data import remotes, versioning
from services import S3Server, SshServer, free_port

pytestmark = pytest.mark.services

RunRatchet = Callable[..., subprocess.CompletedProcess[str]]
REMOTE = remotes.ORIGIN  # the DVC remote `ratchet init --remote URL` makes the default


@dataclass(frozen=True)
class Remote:
    """A DVC remote on one of the servers: its URL (committed), what `dvc remote modify --local` sets
    (endpoint, key file: kept out of git), the credentials from the environment, and how to list
    what reached the server."""

    kind: str
    url: str
    local: dict[str, str]
    env: dict[str, str]
    stored: Callable[[], list[str]]  # every object path under the remote's URL, relative to it


def configure_locally(root: Path, remote: Remote) -> None:
    """What a clone (or the workspace itself) keeps out of git: .dvc/config.local."""
    for key, value in remote.local.items():
        versioning.dvc(root, "remote", "modify", "--local", REMOTE, key, value)


def s3_remote(server: S3Server, prefix: str, endpoint: str | None = None) -> Remote:
    def stored() -> list[str]:
        return [k.removeprefix(f"{prefix}/") for k in server.keys() if k.startswith(f"{prefix}/")]

    return Remote(
        "s3",
        f"s3://{server.bucket}/{prefix}",
        {"endpointurl": endpoint or server.endpoint},
        server.env(),
        stored,
    )


def ssh_remote(server: SshServer, prefix: str, port: int | None = None) -> Remote:
    def stored() -> list[str]:
        where = server.root / prefix
        return [str(p.relative_to(where)) for p in where.rglob("*") if p.is_file()]

    url = server.url(prefix) if port is None else replace(server, port=port).url(prefix)
    return Remote("ssh", url, {"keyfile": str(server.key_file)}, {}, stored)


@pytest.fixture(params=["s3", "ssh"])
def remote(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Remote:
    """A fresh place on the session's S3 or SSH server (a prefix of its own per test), with the
    credentials in this process's environment, so ratchet and DVC children inherit them."""
    prefix = f"{tmp_path.name}-dvc"
    if request.param == "s3":
        made = s3_remote(request.getfixturevalue("s3_server"), prefix)
    else:
        made = ssh_remote(request.getfixturevalue("ssh_server"), prefix)
    for name, value in made.env.items():
        monkeypatch.setenv(name, value)
    # neither a real AWS profile nor an endpoint of the user's may stand in for the test's
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return made


def unreachable(remote: Remote, request: pytest.FixtureRequest) -> Remote:
    """The same remote, pointed at a port of 127.0.0.1 where nothing listens."""
    dead = free_port()
    if remote.kind == "s3":
        return s3_remote(request.getfixturevalue("s3_server"), "x", f"http://127.0.0.1:{dead}")
    return ssh_remote(request.getfixturevalue("ssh_server"), "x", dead)


def new_workspace(root: Path, run_ratchet: RunRatchet, remote: Remote) -> None:
    """`ratchet init --remote URL`: the URL into params.yaml and the committed .dvc/config; the
    endpoint or key file then as a user adds them, with `dvc remote modify --local`."""
    done = run_ratchet(
        "init", str(root), "--model-name", f"remotes-{root.parent.name}", "--remote", remote.url
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"DVC remote origin is now {remote.url}" in done.stdout
    configure_locally(root, remote)
    params = root / "params.yaml"
    params.write_text(re.sub(r"num_epochs: \d+", "num_epochs: 1", params.read_text()))
    versioning.commit(root, ["params.yaml"], "one epoch")


def tree_hashes(root: Path, *paths: str) -> dict[str, str]:
    """sha256 of every file under `paths`, by path relative to root."""
    return {
        str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
        for path in paths
        for f in sorted((root / path).rglob("*"))
        if f.is_file()
    }


def test_ingest_and_retrain_push_to_the_remote_and_a_clone_pulls_the_same(
    remote: Remote,
    run_ratchet: RunRatchet,
    prefect_server: str,
    stream_files: dict[str, Path],
    tmp_path: Path,
) -> None:
    # given a workspace whose default remote is on the server
    root = tmp_path / "ws"
    new_workspace(root, run_ratchet, remote)
    assert "endpointurl" not in (root / ".dvc" / "config").read_text()
    assert "keyfile" not in (root / ".dvc" / "config").read_text()
    # when a batch is ingested and a cycle runs
    ingested = run_ratchet("ingest", str(stream_files["digits-0-4"]), "-w", str(root))
    assert ingested.returncode == 0, ingested.stdout + ingested.stderr
    assert "not backed up" not in ingested.stdout + ingested.stderr
    # (a cycle's outputs go through the same `dvc push`: one kind of remote is enough for them)
    cycled = remote.kind == "s3"
    if cycled:
        cycle = run_ratchet("retrain", "-w", str(root), api_url=prefect_server)
        output = cycle.stdout + cycle.stderr
        assert cycle.returncode == 0, output
        assert "not backed up" not in output and "Traceback" not in output
    # then the data (and the parent, the prepared data and the candidate: each a directory DVC
    # caches: its listing, `<md5>.dir`, and every file in it) are on the server, under DVC's names
    stored = set(remote.stored())
    hashes = versioning.lock_hashes(root) if cycled else {"data": data_md5(root)}
    for path, md5 in hashes.items():
        if path not in ("data", "parent", "artifacts/prepared", "artifacts/candidate"):
            continue
        assert f"files/md5/{md5[:2]}/{md5[2:]}" in stored, (path, sorted(stored)[:5])
    assert len(stored) > (4 if cycled else 3)  # the listings and the files in them
    assert "in sync" in versioning.dvc(root, "status", "--cloud")
    assert versioning.git(root, "status", "--porcelain") == ""

    # when a clone elsewhere is given the same remote settings and pulls
    clone = tmp_path / "clone"
    versioning.git(tmp_path, "clone", "-q", str(root), str(clone))
    configure_locally(clone, remote)
    versioning.dvc(clone, "pull", *([] if cycled else ["data.dvc"]))
    # then it has the same data (and candidate), as DVC sees them and byte for byte
    if cycled:
        assert versioning.lock_hashes(clone) == hashes
        assert "up to date" in versioning.dvc(clone, "status")
    same = ("data", "parent", "artifacts/candidate", "artifacts/eval") if cycled else ("data",)
    assert tree_hashes(clone, *same) == tree_hashes(root, *same)


def data_md5(root: Path) -> str:
    return next(
        ln.split(":", 1)[1].strip() for ln in (root / "data.dvc").read_text().splitlines() if "md5:" in ln
    )


# the same code path for any kind; ssh refuses at once where botocore retries for ~12 s
@pytest.mark.parametrize("remote", ["ssh"], indirect=True)
def test_an_unreachable_remote_leaves_the_ingest_committed_and_says_so_once(
    remote: Remote,
    run_ratchet: RunRatchet,
    stream_files: dict[str, Path],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    # given a workspace whose remote's server cannot be reached (nothing listens on its port)
    root = tmp_path / "ws"
    dead = unreachable(remote, request)
    unreachable_url = dead.url
    new_workspace(root, run_ratchet, dead)
    before = versioning.head(root)
    # when a batch is ingested
    done = run_ratchet("ingest", str(stream_files["digits-0-4"]), "-w", str(root))
    output = done.stdout + done.stderr
    # then the batch is committed, the failed push is said in one line (exit 1, the command's error
    # line, with DVC's reason), and there is no traceback
    assert done.returncode == 1, output
    said = [ln for ln in output.splitlines() if "committed but not backed up" in ln]
    assert len(said) == 1 and said[0].startswith("ratchet: error: batch "), output
    assert "dvc push failed" in said[0]
    assert "Traceback" not in output
    assert versioning.head(root) != before
    assert "data.dvc" in versioning.git(root, "show", "--name-only", "--format=", "HEAD").split()
    assert versioning.git(root, "status", "--porcelain") == ""
    assert interrupted_ingest(root, run_ratchet) == {"committed": True, "batch_id": said[0].split()[3]}

    # when the remote is the reachable one again, the next ingest finishes the push that waited
    params = root / "params.yaml"
    params.write_text(params.read_text().replace(unreachable_url, remote.url))  # params.yaml is its home
    versioning.commit(root, ["params.yaml"], "the DVC remote is reachable again")
    configure_locally(root, remote)
    again = run_ratchet("ingest", str(stream_files["digits-0-4"]), "-w", str(root))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "finished the interrupted ingest of" in again.stdout
    assert "in sync" in versioning.dvc(root, "status", "--cloud")
    assert remote.stored()


def interrupted_ingest(root: Path, run_ratchet: RunRatchet) -> dict[str, object] | None:
    """What `ratchet status --json` says of an ingest left unfinished (committed, not pushed)."""
    done = run_ratchet("status", "--json", "-w", str(root))
    assert done.returncode == 0, done.stdout + done.stderr
    found = json.loads(done.stdout)["interrupted_ingest"]
    return None if found is None else {k: found[k] for k in ("committed", "batch_id")}
