"""The reviewer's pictures: the files render writes, and the accuracy matrix's numbers and blanks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from ratchet.metrics import Accuracies, Confusion, CycleMetrics, Headline, ModelMetrics, SplitMetrics
from ratchet.plots import (
    ACCURACY_MATRIX,
    ACCURACY_MATRIX_TABLE,
    ACCURACY_OVER_VERSIONS,
    CONFUSION,
    PER_CLASS,
    VersionRow,
    accuracy_matrix,
    render,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PICTURES = (ACCURACY_OVER_VERSIONS, ACCURACY_MATRIX, PER_CLASS, CONFUSION)


def split(accuracy: float, per_class: dict[str, float]) -> SplitMetrics:
    return SplitMetrics(accuracy=accuracy, n=10, correct=round(accuracy * 10), per_class=per_class)


def first_cycle(classes: tuple[str, ...] = ("a", "b")) -> CycleMetrics:
    """A bootstrap: no champion, no old data."""
    every = split(0.9, dict.fromkeys(classes, 0.9))
    counts = tuple(tuple(9 if i == j else 1 for j in range(len(classes))) for i in range(len(classes)))
    return CycleMetrics(
        candidate=ModelMetrics(old=None, new=every, all=every, per_batch={"b1": 0.9}),
        champion=None,
        gate={},
        confusion=Confusion(classes=classes, counts=counts),
    )


def third_cycle() -> CycleMetrics:
    """Version 3, trained from version 1 on batch b3, after version 2 (also from 1, on b2) was rejected."""
    candidate = ModelMetrics(
        old=split(0.85, {"a": 0.85}),
        new=split(0.8, {"c": 0.8}),
        all=split(0.82, {"a": 0.85, "c": 0.8}),
        per_batch={"b1": 0.85, "b3": 0.8},
    )
    champion = ModelMetrics(
        old=split(0.9, {"a": 0.9}),
        new=split(0.0, {"c": 0.0}),
        all=split(0.45, {"a": 0.9, "c": 0.0}),
        per_batch={"b1": 0.9, "b3": 0.0},
    )
    return CycleMetrics(
        candidate=candidate,
        champion=champion,
        gate={},
        confusion=Confusion(classes=("a", "c"), counts=((17, 3), (4, 16))),
    )


def rows() -> list[VersionRow]:
    third = third_cycle()
    return [
        VersionRow("1", "promoted", first_cycle().headline(), {"b1": 0.9}),
        VersionRow(
            "2",
            "rejected",
            Headline(champion=Accuracies(0.9, 0.1, 0.5), candidate=Accuracies(0.4, 0.7, 0.55)),
            {"b1": 0.4, "b2": 0.7},
        ),
        VersionRow("3", "promoted", third.headline(), third.candidate.per_batch),
    ]


def table_rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def assert_pictures(paths: list[Path], out: Path) -> None:
    assert sorted(p.name for p in paths) == sorted((*PICTURES, ACCURACY_MATRIX_TABLE))
    for name in PICTURES:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        assert 5_000 < len(data) < 200_000, (name, len(data))
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            assert image.width >= 300 and image.height >= 200, (name, image.size)
            assert len(set(image.convert("L").getdata())) > 2, f"{name} is blank"


def test_three_versions_with_a_rejected_one_render_every_picture_and_the_table(tmp_path: Path) -> None:
    # given version 3's cycle, whose champion is version 1
    paths = render(rows(), third_cycle(), tmp_path, parent="1")
    # then every picture is a real PNG
    assert_pictures(paths, tmp_path)
    # and the table holds each version's own numbers, blanks where nobody measured, and the
    # champion's number on b3 from this cycle filled into version 1's row
    table = table_rows((tmp_path / ACCURACY_MATRIX_TABLE).read_text())
    assert table[0] == ["version", "outcome", "b1", "b2", "b3"]
    assert table[2:] == [
        ["1", "promoted", "0.900", "-", "0.000"],
        ["2", "rejected", "0.400", "0.700", "-"],
        ["3", "promoted", "0.850", "-", "0.800"],
    ]


def test_the_first_cycle_renders_without_champion_or_old_data(tmp_path: Path) -> None:
    current = first_cycle()
    row = VersionRow("1", "promote", current.headline(), current.candidate.per_batch)
    paths = render([row], current, tmp_path)
    assert_pictures(paths, tmp_path)
    assert table_rows((tmp_path / ACCURACY_MATRIX_TABLE).read_text())[2:] == [["1", "promote", "0.900"]]


def test_one_class_renders(tmp_path: Path) -> None:
    current = first_cycle(classes=("only",))
    assert current.confusion.counts == ((9,),)
    paths = render([VersionRow("1", "promoted", current.headline(), {})], current, tmp_path)
    assert_pictures(paths, tmp_path)


def test_metrics_from_before_batches_and_confusion_still_render(tmp_path: Path) -> None:
    # given a cycle read from an older metrics.json: no accuracy per batch, no confusion matrix
    current = CycleMetrics.from_json(
        {"candidate": first_cycle().candidate.to_json() | {"per_batch": None}, "champion": None, "gate": {}}
    )
    assert current.confusion == Confusion() and current.candidate.per_batch == {}
    paths = render([VersionRow("1", "promoted", current.headline(), {})], current, tmp_path)
    assert_pictures(paths, tmp_path)
    assert table_rows((tmp_path / ACCURACY_MATRIX_TABLE).read_text())[2:] == [["1", "promoted"]]


def test_the_parents_measured_cells_are_kept_and_an_unknown_parent_fills_nothing() -> None:
    history = rows()
    history[0] = VersionRow("1", "promoted", history[0].headline, {"b1": 0.91})
    matrix = accuracy_matrix(history, third_cycle(), parent="1")
    assert matrix.cells[0] == (0.91, None, 0.0)  # b1 kept as its own cycle measured it
    assert matrix.champion == "1" and "version 1, this cycle's champion" in matrix.markdown()
    unknown = accuracy_matrix(history, third_cycle(), parent="9")
    assert unknown.cells[0] == (0.91, None, None)
    assert unknown.champion is None and "champion" not in unknown.markdown()
    assert rows()[1].rejected and not rows()[0].rejected


@pytest.mark.parametrize("module", ["ratchet.plots", "ratchet.cli"])
def test_importing_draws_nothing(module: str) -> None:
    # matplotlib is imported when a picture is drawn, never by importing the module
    code = f"import sys, {module}; print('matplotlib' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "False", out.stderr


def test_a_long_history_pictures_the_latest_versions_and_batches_and_tables_them_all(tmp_path: Path) -> None:
    from ratchet.plots import PICTURED, _accuracy_matrix, _accuracy_over_versions

    # given 45 versions, each the candidate of one more batch, every third rejected
    third = third_cycle()
    history = [
        VersionRow(
            str(n),
            "rejected" if n % 3 == 0 else "promoted",
            third.headline(),
            {f"b{k}": 0.8 for k in range(1, n + 1)},
        )
        for n in range(1, 46)
    ]
    matrix = accuracy_matrix(history, third, parent="44")
    # then the table keeps every version and batch
    assert len(table_rows(matrix.markdown())) == 2 + 45 and len(matrix.batches) == 45
    # and the pictures the latest PICTURED, and say so
    over = _accuracy_over_versions(history[-PICTURED:], len(history))
    ax = over.axes[0]
    assert [t.get_text().split()[0] for t in ax.get_xticklabels()] == [
        str(n) for n in range(46 - PICTURED, 46)
    ]
    assert f"the latest {PICTURED} of 45 versions" in ax.get_title()
    # with one artist per series line and per kind of marker, not one per point
    assert len(ax.get_lines()) <= 3 * 4
    latest = matrix.latest(PICTURED)
    assert latest.versions == tuple(str(n) for n in range(46 - PICTURED, 46))
    assert latest.batches == tuple(f"b{k}" for k in range(46 - PICTURED, 46))
    assert all(len(row) == PICTURED for row in latest.cells)
    heat = _accuracy_matrix(latest, 45, 45).axes[0]
    assert "of 45 versions" in heat.get_title() and "of 45 batches" in heat.get_title()
    # and render writes every file
    written = render(history, third, tmp_path, parent="44")
    assert {p.name for p in written} == {ACCURACY_MATRIX_TABLE, *PICTURES}
