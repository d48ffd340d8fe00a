"""The whole cycle on the real stack: a multi-batch stream through the Prefect flow, MLflow and DVC.

One workspace is built for the module (ingest + retrain for every batch of the digits stream) and
the tests below read what it left behind, as a user would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ratchet import app
from ratchet.cli import main
from ratchet.cycle import Outcome, ledger
from ratchet.data import catalog, versioning
from ratchet.data.digits import StreamBatch
from ratchet.registry import open_registry
from ratchet.workspace import init_workspace, open_workspace

pytestmark = pytest.mark.usefixtures("prefect_server")

RunRatchet = Callable[..., "subprocess.CompletedProcess[str]"]


class Stream:
    def __init__(self, root: Path, outcomes: dict[str, Outcome]) -> None:
        self.root = root
        self.outcomes = outcomes
        self.ws = open_workspace(root)
        self.registry = open_registry(self.ws)


@pytest.fixture(scope="module")
def streamed(
    tmp_path_factory: pytest.TempPathFactory, stream_files: dict[str, Path], prefect_server: None
) -> Stream:
    root = tmp_path_factory.mktemp("ws")
    init_workspace(root, model_name="digits-it")
    outcomes: dict[str, Outcome] = {}
    for name, path in stream_files.items():
        app.ingest(root, path)
        outcome = app.retrain(root)
        assert outcome is not None, f"no cycle ran for {name}"
        outcomes[name] = outcome
    return Stream(root, outcomes)


def test_the_gate_promotes_good_batches_and_rejects_scrambled_labels(streamed: Stream) -> None:
    actions = {name: o.action for name, o in streamed.outcomes.items()}
    assert actions == {
        "digits-0-4": "promoted",
        "digits-5-9": "promoted",
        "digits-more": "promoted",
        "digits-scrambled": "rejected",
        "digits-rest": "promoted",
    }
    failed = {r.split(": ")[1] for r in streamed.outcomes["digits-scrambled"].reasons if r.startswith("FAIL")}
    # caught on purpose: the labels disagree with both models, and the candidate forgot
    assert {"labels", "forgetting"} <= failed
    labels = next(r for r in streamed.outcomes["digits-scrambled"].reasons if r.startswith("FAIL: labels"))
    assert "suspect batch" in labels and "p<0.001" in labels


def test_new_classes_cost_interference_not_forgetting(streamed: Stream) -> None:
    reasons = streamed.outcomes["digits-5-9"].reasons
    forgetting = next(r for r in reasons if r.startswith("ok: forgetting"))
    interference = next(r for r in reasons if r.startswith("ok: interference"))
    assert "old samples taken for the new classes 5, 6, 7, 8, 9 (costing" in interference
    assert "old data, known classes" in forgetting
    assert any(r.startswith("ok: new classes: 5, 6, 7, 8, 9 told apart") for r in reasons)


def test_new_classes_grow_the_head_and_the_champion_knows_all_digits(streamed: Stream) -> None:
    second = streamed.outcomes["digits-5-9"]
    assert second.metrics.champion.new == 0.0  # the first champion never saw 5-9
    assert second.metrics.candidate.new > 0.9
    assert second.metrics.candidate.old > 0.9  # and replay kept 0-4


def test_every_version_carries_lineage(streamed: Stream) -> None:
    versions = streamed.registry.versions()
    assert len(versions) == len(streamed.outcomes)  # one version per cycle, none duplicated
    params = streamed.ws.params()
    for v in versions:
        assert v.tag("params_hash") == params.digest()
        assert v.tag("strategy") == "replay"
        assert v.tag("batches")
        # the git commit holds the cycle that produced this version
        cycle = json.loads(versioning.git(streamed.root, "show", f"{v.tag('git_commit')}:cycle.json"))
        assert cycle["cycle_id"] == v.tag("cycle_id")
        assert cycle["new_batches"] == v.tag_list("batches")
        # the data version names a commit whose data.dvc has that md5
        commit, md5 = v.tag("data_version").split(":")
        data_dvc = versioning.git(streamed.root, "show", f"{v.tag('git_commit')}:data.dvc")
        assert md5 in data_dvc
        assert versioning.git(streamed.root, "cat-file", "-t", v.tag("git_commit")).strip() == "commit"
        assert commit
        assert v.description.startswith(("Promoted", "Rejected"))
    first, second = versions[0], versions[1]
    assert first.tag("parent_version") == ""
    assert second.tag("parent_version") == first.version
    assert second.tag_list("batches_seen") == first.tag_list("batches") + second.tag_list("batches")


def test_each_cycle_leaves_a_run_with_epochs_evaluation_and_report(streamed: Stream) -> None:
    client = streamed.registry.client
    version = streamed.registry.versions()[1]
    run = client.get_run(version.run_id)
    params = streamed.ws.params()
    assert run.data.params["train.lr"] == str(params.train.lr)
    assert {"candidate_old_accuracy", "candidate_new_accuracy", "champion_old_accuracy"} <= set(
        run.data.metrics
    )
    losses = client.get_metric_history(version.run_id, "train_loss")
    assert [m.step for m in losses] == list(range(1, params.train.num_epochs + 1))
    report = [a.path for a in client.list_artifacts(version.run_id, "report")]
    assert "report/report.md" in report


def test_a_rejected_batch_is_held_with_its_reasons_not_consumed(streamed: Stream) -> None:
    states = {s.batch_id: s for s in ledger(streamed.ws, streamed.registry)}
    scrambled = streamed.outcomes["digits-scrambled"]
    held = states[scrambled.batches[0]]
    assert held.state == "held"
    assert held.version == scrambled.version
    assert (
        held.reason.startswith(f"version {scrambled.version} rejected: ")
        and "labels: suspect batch" in held.reason
    )
    assert sorted(s.state for s in states.values()) == ["held", "learned", "learned", "learned", "learned"]
    # held batches wait for a person: retrain has nothing to do and says why
    assert app.retrain(streamed.root) is None


def test_reingesting_a_batch_adds_nothing(streamed: Stream, stream_files: dict[str, Path]) -> None:
    head = versioning.head(streamed.root)
    report = app.ingest(streamed.root, stream_files["digits-0-4"]).report
    assert report.batch_id is None
    assert len(report.duplicates) > 0
    assert len(catalog.list_batches(streamed.ws.data_dir)) == len(stream_files)
    assert versioning.head(streamed.root) == head


def test_status_json_lists_champion_and_versions(
    streamed: Stream, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--json", "-w", str(streamed.root)]) == 0
    doc = json.loads(capsys.readouterr().out)
    champion = streamed.registry.champion()
    assert champion is not None
    assert doc["champion"]["version"] == champion.version
    statuses = {v["version"]: v["status"] for v in doc["versions"]}
    assert statuses[champion.version] == "champion"
    assert "rejected" in statuses.values()
    for v in doc["versions"]:
        assert {"version", "status", "parent", "batches", "metrics", "reasons"} <= set(v)
        assert v["metrics"]["candidate"]["new"] is not None
        assert v["reasons"]
    states = {b["source"]: b["state"] for b in doc["batches"]}
    assert states["digits-scrambled.npz"] == "held" and states["digits-rest.npz"] == "learned"


def test_a_held_batch_is_dropped_on_record_and_learned_ones_cannot_be(
    streamed: Stream, run_ratchet: RunRatchet
) -> None:
    root = str(streamed.root)
    done = run_ratchet(
        "drop", "digits-scrambled", "--reason", "labels shuffled upstream", "--by", "alice", "-w", root
    )
    assert done.returncode == 0, done.stderr
    assert "dropped by alice" in done.stdout
    doc = json.loads(run_ratchet("status", "--json", "-w", root).stdout)
    dropped = next(b for b in doc["batches"] if b["source"] == "digits-scrambled.npz")
    assert dropped["state"] == "dropped"
    assert dropped["reason"].startswith("dropped by alice at ") and dropped["reason"].endswith(
        "labels shuffled upstream"
    )
    # a batch the champion learned is neither requeued nor dropped: one line, exit 2, nothing recorded
    for args in (("requeue", "digits-0-4"), ("drop", "digits-0-4", "--reason", "x")):
        refused = run_ratchet(*args, "-w", root)
        assert refused.returncode == 2
        assert refused.stderr.strip().splitlines() == [
            f"ratchet: error: batch {streamed.outcomes['digits-0-4'].batches[0]} is learned: only "
            + (
                "held or dropped batches can be requeued"
                if args[0] == "requeue"
                else "held or pending batches can be dropped"
            )
        ]
    assert app.retrain(streamed.root) is None
    text = run_ratchet("status", "-w", root).stdout
    assert "batches: 4 learned, 0 pending, 0 held, 1 dropped" in text


def test_a_relabelled_copy_of_a_dropped_batch_is_new_data(
    streamed: Stream, stream: list[StreamBatch], tmp_path: Path
) -> None:
    from sklearn.datasets import load_digits

    # given the dropped scrambled batch, relabelled with the true digits
    digits = load_digits()
    pixels = np.clip(digits.images * 16, 0, 255).astype(np.uint8)
    truth = {image.tobytes(): label for image, label in zip(pixels, digits.target, strict=True)}
    scrambled = next(b for b in stream if b.name == "digits-scrambled")
    fixed = StreamBatch(
        "digits-relabelled", "", scrambled.images, np.array([truth[i.tobytes()] for i in scrambled.images])
    )
    # when it is ingested, its samples do not count as already ingested (their batch was dropped)
    report = app.ingest(streamed.root, fixed.save_npz(tmp_path)).report
    assert report.batch_id is not None and report.num_train + report.num_held_out == len(scrambled.labels)
    # and the next cycle learns it
    outcome = app.retrain(streamed.root)
    assert outcome is not None and outcome.action == "promoted", outcome.reasons
    assert list(outcome.batches) == [report.batch_id]


def test_champion_loads_with_pyfunc_in_a_fresh_process(streamed: Stream, stream: list[StreamBatch]) -> None:
    batch = stream[-1]
    images = streamed.root / "probe.npy"
    np.save(images, batch.images[:200, :, :, None])  # uint8 (N, H, W, C), as the signature says
    code = f"""
import mlflow, numpy as np
mlflow.set_tracking_uri({streamed.registry.tracking_uri!r})
model = mlflow.pyfunc.load_model("models:/digits-it@champion")
out = model.predict(np.load({str(images)!r}))
print(",".join(out["label"].astype(str)))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    predicted = done.stdout.strip().splitlines()[-1].split(",")
    accuracy = float(np.mean(np.array(predicted) == batch.labels[:200].astype(str)))
    assert accuracy > 0.9


def test_dvc_repro_reproduces_the_last_candidate(streamed: Stream) -> None:
    metrics = streamed.ws.stage_paths().eval / "metrics.json"
    before_metrics = metrics.read_text()
    before_lock = (streamed.root / "dvc.lock").read_text()
    versioning.dvc(streamed.root, "repro", "-f")
    assert metrics.read_text() == before_metrics
    assert (streamed.root / "dvc.lock").read_text() == before_lock


def test_rollback_restores_the_parent_and_is_visible_in_status(streamed: Stream) -> None:
    champion = streamed.registry.champion()
    assert champion is not None
    assert main(["rollback", "-w", str(streamed.root)]) == 0
    restored = streamed.registry.champion()
    assert restored is not None
    assert restored.version == champion.tag("parent_version")
    demoted = next(v for v in streamed.registry.versions() if v.version == champion.version)
    assert demoted.status == "rolled back"
    # what the demoted version learned goes back in the queue, not silently lost
    states = {s.batch_id: s for s in ledger(streamed.ws, streamed.registry)}
    for batch in champion.tag_list("batches"):
        assert (states[batch].state, states[batch].reason) == (
            "pending",
            f"version {champion.version} was promoted, then rolled back: the next cycle trains on it again",
        )
    assert main(["rollback", "-w", str(streamed.root), "--to", "999"]) == 1
    # and the next retrain trains on it again from the restored champion: a new version, not a resume
    again = app.retrain(streamed.root)
    assert again is not None and not again.resumed
    assert again.version not in (champion.version, restored.version)
    assert (again.parent, again.batches) == (restored.version, tuple(champion.tag_list("batches")))
