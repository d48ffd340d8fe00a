"""An inbox under an S3 prefix (moto's server on 127.0.0.1): the same flow, the same semantics as a
local inbox; batches are moved on S3 by copy then delete, only once versioned.

Credentials and endpoint come from the environment (AWS_*), as boto3 reads them; one epoch a cycle.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest
from PIL import Image

from ratchet import app
from ratchet.cli import main
from ratchet.data import versioning
from ratchet.data.catalog import list_batches
from ratchet.data.digits import StreamBatch
from ratchet.flows.inbox import ingest_and_retrain
from ratchet.state import STATE_DIR
from ratchet.workspace import init_workspace
from services import S3Server

pytestmark = pytest.mark.services


def make_workspace(root: Path, inbox_url: str) -> Path:
    init_workspace(root, model_name="inbox-s3")
    params = root / "params.yaml"
    text = re.sub(r"num_epochs: \d+", "num_epochs: 1", params.read_text())
    params.write_text(text.replace("  path: incoming", f"  path: {inbox_url}"))
    versioning.commit(root, ["params.yaml"], "an S3 inbox, one epoch")
    return root


@pytest.fixture()
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The credentials and endpoint where boto3 (and so s3fs) reads them: the environment."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    return s3_server


def objects(server: S3Server, prefix: str) -> dict[str, tuple[str, str]]:
    """Every object under `prefix` (key relative to it) with its ETag and LastModified: what
    "untouched" means."""
    pages = (
        server.client().get_paginator("list_objects_v2").paginate(Bucket=server.bucket, Prefix=f"{prefix}/")
    )
    return {
        o["Key"].removeprefix(f"{prefix}/"): (o["ETag"], o["LastModified"].isoformat())
        for page in pages
        for o in page.get("Contents", ())
    }


def png(image: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")  # type: ignore[arg-type]
    return out.getvalue()


def test_an_s3_inbox_versions_complete_batches_moves_them_on_s3_and_never_twice(
    tmp_path: Path,
    stream: list[StreamBatch],
    stream_files: dict[str, Path],
    s3_env: S3Server,
    prefect_server: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # given an S3 inbox with an .npz, a marked directory, a corrupt .npz, an unmarked directory, an
    # .npz still being written and a hidden object
    server, prefix = s3_env, "team/incoming"
    root = make_workspace(tmp_path / "ws", f"s3://{s3_env.bucket}/{prefix}")
    s3 = server.client()

    def put(key: str, body: bytes) -> None:
        s3.put_object(Bucket=server.bucket, Key=f"{prefix}/{key}", Body=body)

    put("digits-0-4.npz", stream_files["digits-0-4"].read_bytes())
    folder = stream[2]
    for i, (image, label) in enumerate(zip(folder.images[:60], folder.labels[:60], strict=True)):
        put(f"more-digits/{label}/{i:04d}.png", png(image))
    put("more-digits/_READY", b"")
    put("bad.npz", os.urandom(2000))
    for i, (image, label) in enumerate(zip(folder.images[60:70], folder.labels[60:70], strict=True)):
        put(f"unmarked/{label}/{i:04d}.png", png(image))
    put("digits-rest.npz.part", stream_files["digits-rest"].read_bytes()[:5000])
    put(".upload-digits-rest.npz", b"")  # hidden: not a batch at all
    before = objects(server, prefix)
    waiting = ("unmarked/", "digits-rest", ".upload")
    untouched = {k: v for k, v in before.items() if k.startswith(waiting)}

    # when the command runs the flow once
    assert main(["inbox", "-w", str(root)]) == 0

    # then the two complete batches are versioned, oldest first, and moved to done/ on S3
    out = capsys.readouterr().out
    batches = [b.batch_id for b in list_batches(root / "data")]
    assert len(batches) == 2
    assert f"digits-0-4.npz: versioned as batch {batches[0]} (" in out
    assert f"more-digits: versioned as batch {batches[1]} (" in out
    after = objects(server, prefix)
    assert "done/digits-0-4.npz" in after and "digits-0-4.npz" not in after
    moved = sorted(k.removeprefix("done/") for k in after if k.startswith("done/more-digits/"))
    assert moved == sorted(k for k in before if k.startswith("more-digits/"))
    assert not any(k.startswith("more-digits/") for k in after)
    # the corrupt one is set aside with its reason, written beside it
    reason = s3.get_object(Bucket=server.bucket, Key=f"{prefix}/rejected/bad.npz.reason.txt")["Body"].read()
    assert reason.decode().startswith("bad.npz: not a valid .npz file") and STATE_DIR not in reason.decode()
    assert "rejected/bad.npz" in after and "bad.npz" not in after
    # the incomplete two are left alone and said to wait
    assert {k: v for k, v in after.items() if k.startswith(waiting)} == untouched
    assert ".upload-digits-rest.npz" not in out
    assert "unmarked: waiting (incomplete: no _READY in it yet)" in out
    assert "digits-rest.npz.part: waiting (incomplete: still being written)" in out
    # exactly one cycle learned both, and no staged copy is left
    now = app.status(root)
    assert [v.version for v in now.versions] == ["1"]
    assert now.in_state("learned") == batches
    assert not (root / STATE_DIR / "inbox-staging").exists()

    # when a run died between copying a batch to done/ and deleting it, the batch is in the inbox again
    s3.copy_object(
        Bucket=server.bucket,
        Key=f"{prefix}/digits-0-4.npz",
        CopySource={"Bucket": server.bucket, "Key": f"{prefix}/done/digits-0-4.npz"},
    )
    head = versioning.head(root)
    run = app.inbox(root)

    # then it is not versioned twice: it goes to done/ again under a new name, with a note
    assert run.inbox == f"s3://{server.bucket}/{prefix}"
    again = next(t for t in run.batches if t.name == "digits-0-4.npz")
    assert again.status == "already versioned" and again.moved_to == "done/digits-0-4-2.npz"
    assert not run.cycle_ran and versioning.head(root) == head
    assert len(list_batches(root / "data")) == 2
    after = objects(server, prefix)
    assert "digits-0-4.npz" not in after and "done/digits-0-4-2.npz" in after
    assert "done/digits-0-4-2.npz.note.txt" in after


def test_an_s3_inbox_out_of_reach_is_one_line_and_nothing_is_versioned(
    tmp_path: Path, s3_env: S3Server, prefect_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # given an inbox in a bucket that does not exist
    root = make_workspace(tmp_path / "ws", "s3://no-such-bucket/incoming")
    # when the command runs, it says so in one line before starting the flow
    assert main(["inbox", "-w", str(root)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    where = "inbox s3://no-such-bucket/incoming"
    assert err == [f"ratchet: error: {where}: cannot list it: no bucket 'no-such-bucket'"]
    # and the flow (a deployment's run) versions nothing and says why
    run = ingest_and_retrain(workspace=str(root))
    assert run.unreadable.startswith(f"{where}: cannot list it")
    assert run.batches == () and not run.cycle_ran
    assert list_batches(root / "data") == []
