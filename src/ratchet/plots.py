"""Pictures of a cycle for the reviewer of its version: numbers in, PNG files and a markdown table out.

`render` draws the held-out accuracy of every version so far (the latest `PICTURED` of a longer
history), the accuracy matrix (each version on each batch's held-out data; its markdown table has
them all, the picture the latest), this cycle's per-class accuracy and the candidate's confusion
matrix.
Pure rendering: nothing here reads the registry or a workspace. matplotlib is imported inside the
functions (it is slow to import, and `ratchet status` never draws) and draws on its Agg canvas
directly, so no global backend is switched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ratchet.metrics import CycleMetrics, Headline, Model, Split

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.text import Text

# what render writes into its output directory
ACCURACY_OVER_VERSIONS = "accuracy_over_versions.png"
ACCURACY_MATRIX = "accuracy_matrix.png"
ACCURACY_MATRIX_TABLE = "accuracy_matrix.md"
PER_CLASS = "per_class.png"
CONFUSION = "confusion.png"

DPI = 100  # sharp enough to read the numbers in the cells, small enough to keep each file tens of KB
REJECTED = frozenset({"reject", "rejected"})  # the gate's verdict word and the action word
MAX_ANNOTATED = 30  # beyond this many classes or batches the numbers no longer fit in the cells
# the pictures show the latest this many versions (and the matrix the latest this many batches): a
# longer history no longer fits on a page, and drawing it would grow every cycle's cost with the
# history; the markdown table keeps every version and batch
PICTURED = 20


@dataclass(frozen=True)
class VersionRow:
    """One registered version, as its own cycle measured it."""

    version: str  # the registry's version, as the axes label it
    outcome: str  # the gate's verdict or what was done ("promote", "rejected", ...): shown as is
    headline: Headline  # the champion it faced and itself, on old, new and all held-out data
    per_batch: Mapping[str, float]  # its accuracy on each batch's held-out set (candidate per_batch)

    @property
    def rejected(self) -> bool:
        return self.outcome in REJECTED


@dataclass(frozen=True)
class AccuracyMatrix:
    """Rows: versions, oldest first; columns: batches in the order versions were evaluated on them."""

    versions: tuple[str, ...]
    outcomes: tuple[str, ...]
    batches: tuple[str, ...]
    cells: tuple[tuple[float | None, ...], ...]  # cells[row][column]; None where nobody measured
    champion: str | None = None  # the version whose row took this cycle's champion numbers

    def markdown(self) -> str:
        lines = [
            "# Accuracy matrix",
            "",
            "Accuracy of each model version (rows, oldest first) on the held-out data of each batch "
            "(columns, in the order versions were first evaluated on them); `-` where it was not measured.",
            *(
                [
                    "",
                    f"The row of version {self.champion}, this cycle's champion, also holds its accuracy "
                    "on this cycle's new batches, measured when the candidate was compared with it.",
                ]
                if self.champion is not None
                else []
            ),
            "",
            _table_row(["version", "outcome", *self.batches]),
            _table_row(["---", "---", *("---:" for _ in self.batches)]),
        ]
        for version, outcome, row in zip(self.versions, self.outcomes, self.cells, strict=True):
            lines.append(_table_row([version, outcome, *("-" if v is None else f"{v:.3f}" for v in row)]))
        return "\n".join(lines) + "\n"

    def latest(self, count: int) -> AccuracyMatrix:
        """The last `count` versions' rows on the last `count` batches."""
        return AccuracyMatrix(
            versions=self.versions[-count:],
            outcomes=self.outcomes[-count:],
            batches=self.batches[-count:],
            cells=tuple(row[-count:] for row in self.cells[-count:]),
            champion=self.champion,
        )


def _table_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def accuracy_matrix(
    rows: Sequence[VersionRow], current: CycleMetrics, parent: str | None = None
) -> AccuracyMatrix:
    """Each version's accuracy on each batch's held-out set, from the rows' `per_batch`.

    A version is evaluated, as the candidate of its cycle, on the held-out data of every batch it
    had seen, so its row is blank for later batches. The one exception: this cycle evaluated its
    champion, the version `parent`, on this cycle's batches too (`current.champion.per_batch`), so
    the parent's row takes those numbers where it has none. Same model, same held-out data: a
    number it already has would be the same, and is kept. A parent not among the rows adds nothing.
    """
    measured = [dict(row.per_batch) for row in rows]
    # columns in the order the versions' own cycles first measured them; any filled-in one follows
    batches = dict.fromkeys(batch for cells in measured for batch in cells)
    filled = None
    if current.champion is not None:
        for row, cells in zip(rows, measured, strict=True):
            if row.version == parent:
                filled = parent
                for batch, accuracy in current.champion.per_batch.items():
                    cells.setdefault(batch, accuracy)
                    batches.setdefault(batch)
    return AccuracyMatrix(
        versions=tuple(row.version for row in rows),
        outcomes=tuple(row.outcome for row in rows),
        batches=tuple(batches),
        cells=tuple(tuple(cells.get(batch) for batch in batches) for cells in measured),
        champion=filled,
    )


def render(
    rows: Sequence[VersionRow], current: CycleMetrics, out_dir: Path, parent: str | None = None
) -> list[Path]:
    """Write the five files into `out_dir` and return their paths.

    `rows`: every version so far, oldest first, this cycle's own version last; `current`: this
    cycle's metrics; `parent`: the version this cycle's candidate was trained from (its champion),
    None for the first model. See `accuracy_matrix` for how the matrix is filled.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    matrix = accuracy_matrix(rows, current, parent)
    table = out_dir / ACCURACY_MATRIX_TABLE
    table.write_text(matrix.markdown(), encoding="utf-8")
    drawings = (
        (ACCURACY_OVER_VERSIONS, _accuracy_over_versions(rows[-PICTURED:], len(rows))),
        (ACCURACY_MATRIX, _accuracy_matrix(matrix.latest(PICTURED), len(rows), len(matrix.batches))),
        (PER_CLASS, _per_class(current)),
        (CONFUSION, _confusion(current)),
    )
    paths = [table]
    for name, fig in drawings:
        fig.savefig(out_dir / name, dpi=DPI)
        paths.append(out_dir / name)
    return paths


# ---- drawing ------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself to the figure: savefig renders with Agg
    return fig


def _nothing(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _tick_colors(labels: Sequence[Text], rejected: Sequence[bool]) -> None:
    for label, is_rejected in zip(labels, rejected, strict=True):
        if is_rejected:
            label.set_color("tab:red")


# (model, split) -> how its line looks: colour tells the data apart, the line style the model
SERIES: tuple[tuple[Model, Split, str, Literal["-", "--"], str], ...] = (
    ("candidate", "new", "tab:blue", "-", "o"),
    ("candidate", "old", "tab:orange", "-", "s"),
    ("champion", "new", "tab:blue", "--", "^"),
    ("champion", "old", "tab:orange", "--", "v"),
)
LABELS = {"new": "new data (this cycle's batches)", "old": "old data (earlier batches)"}


def _latest(shown: int, total: int, what: str) -> str:
    return f" (the latest {shown} of {total} {what})" if shown < total else ""


def _accuracy_over_versions(rows: Sequence[VersionRow], total: int) -> Figure:
    from matplotlib.lines import Line2D

    fig = _figure(min(9.0 + 0.5 * len(rows), 16.0), 4.5)
    ax = fig.add_subplot()
    ax.set_title(
        "Held-out accuracy of each version (solid)\nand of the champion it was compared with (dashed)"
        + _latest(len(rows), total, "versions"),
        fontsize=11,
    )
    if not rows:
        _nothing(ax, "no versions yet")
        return fig
    xs = list(range(len(rows)))
    rejected = [row.rejected for row in rows]
    seen: list[float] = []
    handles: list[Line2D] = []
    for model, split, color, style, marker in SERIES:
        ys = [row.headline.of(model).split(split) for row in rows]
        if all(y is None for y in ys):
            continue  # no champion yet, or no old data yet: no line, no legend entry
        seen += [y for y in ys if y is not None]
        ax.plot(xs, [math.nan if y is None else y for y in ys], style, color=color, alpha=0.8)
        # the markers in two artists, not one per point: drawing stays cheap however long the history
        for hollow, face in ((False, color), (True, "white")):
            points = [
                (x, y) for x, y, r in zip(xs, ys, rejected, strict=True) if y is not None and r == hollow
            ]
            if points:
                px, py = zip(*points, strict=True)
                ax.plot(px, py, marker, linestyle="none", color=color, markerfacecolor=face, markersize=7)
        handles.append(
            Line2D([], [], color=color, linestyle=style, marker=marker, label=f"{model}, {LABELS[split]}")
        )
    if any(rejected):
        handles.append(
            Line2D([], [], color="0.3", linestyle="", marker="o", markerfacecolor="white", label="rejected")
        )
    ax.set_xticks(xs, [f"{row.version}\n{row.outcome}" for row in rows])
    _tick_colors(ax.get_xticklabels(), rejected)
    ax.set_xlabel("model version (candidate of each cycle) and what became of it")
    ax.set_ylabel("accuracy on held-out data")
    lowest = min(seen, default=0.0)
    ax.set_ylim(max(0.0, math.floor((lowest - 0.02) * 20) / 20), 1.005)
    ax.set_xlim(-0.5, len(rows) - 0.5)
    ax.grid(alpha=0.3)
    # outside the axes: wherever the lines run, the legend never hides a point
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return fig


def _accuracy_matrix(matrix: AccuracyMatrix, versions: int, batches: int) -> Figure:
    """`matrix` as a heat map; `versions` and `batches`: how many there are in all."""
    import numpy as np
    from matplotlib import colormaps

    rows, columns = len(matrix.versions), len(matrix.batches)
    fig = _figure(min(5.5 + 0.9 * columns, 16.0), min(2.5 + 0.45 * rows, 12.0))
    ax = fig.add_subplot()
    ax.set_title(
        "Accuracy of each version (rows)\non each batch's held-out data (columns); blank: not measured"
        + _latest(rows, versions, "versions")
        + _latest(columns, batches, "batches"),
        fontsize=11,
    )
    if not rows or not columns:
        _nothing(ax, "no accuracy per batch recorded")
        return fig
    values = np.array([[math.nan if v is None else v for v in row] for row in matrix.cells], dtype=float)
    image = ax.imshow(
        np.ma.masked_invalid(values),
        cmap=colormaps["Greens"].with_extremes(bad="white"),
        vmin=0.0,
        vmax=1.0,
        aspect="auto",
        interpolation="nearest",
    )
    if max(rows, columns) <= MAX_ANNOTATED:
        for (i, j), value in np.ndenumerate(values):
            if not math.isnan(value):
                color = "white" if value > 0.6 else "black"
                ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(columns), matrix.batches, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(rows), [f"{v} ({o})" for v, o in zip(matrix.versions, matrix.outcomes, strict=True)])
    _tick_colors(ax.get_yticklabels(), [o in REJECTED for o in matrix.outcomes])
    ax.set_xlabel("batch (held-out data)")
    ax.set_ylabel("model version")
    # thin white lines between cells keep neighbouring blanks and numbers apart
    ax.set_xticks([x - 0.5 for x in range(1, columns)], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, rows)], minor=True)
    ax.grid(which="minor", color="0.85", linewidth=1)
    ax.tick_params(which="minor", length=0)
    fig.colorbar(image, ax=ax, label="accuracy")
    return fig


def _per_class(current: CycleMetrics) -> Figure:
    candidate = current.candidate.all.per_class
    champion = current.champion.all.per_class if current.champion is not None else None
    classes = list(candidate)
    fig = _figure(min(5.0 + 0.45 * len(classes), 16.0), 4.0)
    ax = fig.add_subplot()
    ax.set_title("Accuracy per class on all held-out data (old and new)")
    if not classes:
        _nothing(ax, "no held-out data")
        return fig
    xs = range(len(classes))
    width = 0.4 if champion is not None else 0.6
    if champion is not None:
        ax.bar([x - width / 2 for x in xs], [champion.get(c, 0.0) for c in classes], width, label="champion")
        ax.bar([x + width / 2 for x in xs], [candidate[c] for c in classes], width, label="candidate")
    else:
        ax.bar(list(xs), [candidate[c] for c in classes], width, label="candidate (no champion yet)")
    ax.set_xticks(list(xs), classes, rotation=45 if len(classes) > 12 else 0, fontsize=8)
    ax.set_xlabel("true class")
    ax.set_ylabel("share of the class's samples predicted right")
    ax.set_ylim(0.0, 1.2)  # headroom above 1.0 for the legend
    ax.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", ncols=2, fontsize=8)
    return fig


def _confusion(current: CycleMetrics) -> Figure:
    import numpy as np

    matrix = current.confusion
    k = len(matrix.classes)
    side = min(4.0 + 0.45 * k, 14.0)
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot()
    ax.set_title("Candidate's confusion matrix\non all held-out data (sample counts)", fontsize=11)
    if not k:
        _nothing(ax, "not recorded for this cycle")
        return fig
    counts = np.array(matrix.counts, dtype=np.int64)
    image = ax.imshow(counts, cmap="Blues", interpolation="nearest", vmin=0)
    if k <= MAX_ANNOTATED:
        bright = counts.max() / 2
        for (i, j), count in np.ndenumerate(counts):
            if count:
                color = "white" if count > bright else "black"
                ax.text(j, i, str(count), ha="center", va="center", fontsize=8, color=color)
    ticks = range(k)
    ax.set_xticks(ticks, matrix.classes, rotation=45 if k > 12 else 0, fontsize=8)
    ax.set_yticks(ticks, matrix.classes, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.colorbar(image, ax=ax, label="samples")
    return fig
