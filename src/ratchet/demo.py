"""`ratchet demo`: the embedded digits stream through the real cycle, batch by batch, then a table."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from ratchet import app
from ratchet.cycle import Outcome
from ratchet.data.digits import digits_stream
from ratchet.metrics import MODELS, SPLITS, Model, Split
from ratchet.report import fmt_accuracy


def _acc(o: Outcome, model: Model, split: Split) -> str:
    return fmt_accuracy(o.metrics.of(model).split(split))


def cycle_table(rows: list[tuple[str, Outcome]]) -> str:
    header = (
        f"{'batch':<18} {'strategy':<9} {'ver':>3}  {'old: champ':>10} {'cand':>6}  "
        f"{'new: champ':>10} {'cand':>6}  {'decision':<9} reasons"
    )
    lines = [header, "-" * len(header)]
    for name, o in rows:
        failed = [r.removeprefix("FAIL: ") for r in o.reasons if r.startswith("FAIL")]
        # a promotion is best explained by what it did to old data (or that it was the first model)
        key = next((r for r in o.reasons if r.startswith(("ok: forgetting", "ok: first model"))), "")
        why = "; ".join(failed) if failed else key.removeprefix("ok: ")
        lines.append(
            f"{name:<18} {o.strategy:<9} {o.version:>3}  {_acc(o, 'champion', 'old'):>10} "
            f"{_acc(o, 'candidate', 'old'):>6}  {_acc(o, 'champion', 'new'):>10} "
            f"{_acc(o, 'candidate', 'new'):>6}  {o.action:<9} {why}"
        )
    return "\n".join(lines)


def plot_cycles(rows: list[tuple[str, Outcome]], path: Path) -> None:
    """Champion vs candidate accuracy per cycle, marking the decisions: easier seen than read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    xs = range(1, len(rows) + 1)
    for ax, split in zip(axes, SPLITS[:2], strict=True):
        for model, style in zip(MODELS, ("o--", "s-"), strict=True):
            ys = [o.metrics.of(model).split(split) for _, o in rows]
            ax.plot(xs, [float("nan") if y is None else y for y in ys], style, label=model)
        for x, (_, o) in zip(xs, rows, strict=True):
            ax.axvspan(
                x - 0.4, x + 0.4, color="tab:green" if o.action == "promoted" else "tab:red", alpha=0.08
            )
        ax.set_title(f"held-out {split} data")
        ax.set_xticks(list(xs), [name for name, _ in rows], rotation=20, fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="lower left")
    fig.suptitle("ratchet demo: green = promoted, red = rejected")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(workspace: Path | None = None) -> int:
    t0 = time.perf_counter()
    root = workspace or Path(tempfile.mkdtemp(prefix="ratchet-demo-"))
    ws, _ = app.init(root, model_name="ratchet-digits-demo")
    incoming = ws.root / "incoming"
    incoming.mkdir(exist_ok=True)
    print(f"demo workspace: {ws.root} (set up in {time.perf_counter() - t0:.1f}s)")

    rows: list[tuple[str, Outcome]] = []
    timings: list[str] = []
    for batch in digits_stream():
        print(f"\n=== batch {batch.name}: {batch.description} ({len(batch.labels)} images) ===")
        t_batch = time.perf_counter()
        done = app.ingest(ws.root, batch.save_npz(incoming))
        print(f"data version {done.data_version}")
        print(done.report.summary())
        t_cycle = time.perf_counter()
        outcome = app.retrain(ws.root)
        if outcome is None:
            continue
        rows.append((batch.name, outcome))
        timings.append(
            f"{batch.name}: ingest {t_cycle - t_batch:.1f}s, cycle {time.perf_counter() - t_cycle:.1f}s"
        )

    plot = ws.root / "reports" / "cycles.png"
    plot_cycles(rows, plot)
    print("\n" + cycle_table(rows))
    print("\ntimings: " + "; ".join(timings) + f"; total {time.perf_counter() - t0:.1f}s")
    print(f"plot: {plot}")
    now = app.status(ws.root)
    store = now.tracking_uri  # the store actually used: MLFLOW_TRACKING_URI may name another
    print(f"inspect: ratchet status -w {ws.root}")
    if store.startswith(("http://", "https://")):  # a tracking server is its own UI
        print(f"         {store}")
    else:
        print(f"         mlflow ui --backend-store-uri {store}")
    promoted = sum(o.action == "promoted" for _, o in rows)
    rejected = sum(o.action == "rejected" for _, o in rows)
    print(f"{promoted} promoted, {rejected} rejected")
    for batch_id in now.in_state("held"):
        print(f"held, not lost: batch {batch_id} (`ratchet requeue` retries, `ratchet drop` retires)")
    return 0
