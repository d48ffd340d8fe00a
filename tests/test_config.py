"""Params: defaults for what a file leaves out, and every problem one InputError line naming the key."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from ratchet.config import (
    SCHEMA,
    DataParams,
    GateParams,
    InboxParams,
    Params,
    RegistryParams,
    RemoteParams,
    ReviewParams,
    ScheduleParams,
    TrainParams,
    complete_params,
    load_params,
    parse_params,
    render_params,
)
from ratchet.errors import InputError
from ratchet.train import strategies

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = render_params()
RAW: dict[str, Any] = yaml.safe_load(TEMPLATE)
# params.yaml as the release before `schema` wrote it: every key, no schema line
SCHEMA1 = (Path(__file__).parent / "fixtures" / "params-schema1.yaml").read_text()


def raw() -> dict[str, Any]:
    return copy.deepcopy(RAW)


def refused(value: Any) -> InputError:
    """Parse `value`, expect an InputError, check the one-line/exit-code contract, return it."""
    with pytest.raises(InputError) as info:
        parse_params(value)
    err = info.value
    assert err.exit_code == 2
    assert "\n" not in str(err)
    return err


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def without(text: str, *keys: str) -> str:
    """`text` without the lines of these keys (and their comment continuation lines)."""
    out: list[str] = []
    dropping = False
    for line in text.splitlines():
        key = line.strip().split(":")[0]
        if line.startswith("  ") and not line.strip().startswith("#"):
            dropping = key in keys
        elif not line.startswith(" "):
            dropping = False
        if not dropping:
            out.append(line)
    assert len(out) < len(text.splitlines())
    return "\n".join(out) + "\n"


def without_section(text: str, name: str) -> str:
    lines = text.splitlines()
    start = lines.index(f"{name}:")
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith(" ")), len(lines))
    return "\n".join(lines[:start] + lines[end:]) + "\n"


# ---- the template ----------------------------------------------------------------------------


def test_root_params_yaml_is_the_rendered_default() -> None:
    assert (REPO / "params.yaml").read_text() == render_params()


def test_defaults_are_the_values_of_the_previous_release() -> None:
    # given the last params.yaml without a schema line, every key written out
    old = parse_params(yaml.safe_load(SCHEMA1))
    # then the defaults are its values, and the rendered default file reads the same
    assert old == Params() == parse_params(RAW)
    assert Params().registry == RegistryParams("ratchet-classifier", "ratchet", None, None)
    assert old.digest() == Params().digest()


def test_every_knob_has_a_default_and_a_comment() -> None:
    for section in dataclasses.fields(Params):
        for knob in dataclasses.fields(getattr(Params(), section.name)):
            assert knob.default is not dataclasses.MISSING, f"{section.name}.{knob.name}"
            assert len(knob.metadata["comment"]) > 10, f"{section.name}.{knob.name}"
            # every comment reaches the rendered file
            assert knob.metadata["comment"].split()[-1] in TEMPLATE


def test_rendered_file_starts_with_the_header_then_the_schema() -> None:
    lines = TEMPLATE.splitlines()
    first = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    assert first > 0 and lines[first] == f"schema: {SCHEMA}" and SCHEMA == 2
    assert "  tracking_uri: null" in TEMPLATE and "  registry_uri: null" in TEMPLATE
    # a long comment continues on comment lines in the same column
    alpha = lines.index(next(line for line in lines if line.startswith("  alpha: 0.05")))
    assert lines[alpha + 1].lstrip().startswith("# ")
    assert lines[alpha + 1].index("#") == lines[alpha].index("#")
    assert max(len(line) for line in lines) <= 110


def test_rendered_values_round_trip_even_when_yaml_would_misread_them() -> None:
    # given values that YAML would read as other types if written bare
    p = dataclasses.replace(
        Params(),
        registry=RegistryParams(model_name="123", experiment="yes: no", tracking_uri="sqlite:///x.db"),
        data=DataParams(image_size=28, channels=3),
        train=dataclasses.replace(TrainParams(), lr=1e-05, weight_decay=0.0),
    )
    # then the rendered text reads back as exactly these values
    assert parse_params(yaml.safe_load(render_params(p))) == p


def test_rendering_refuses_an_out_of_range_value() -> None:
    with pytest.raises(InputError, match=r"data\.image_size must be at least 8, got 4"):
        render_params(dataclasses.replace(Params(), data=DataParams(image_size=4)))


def test_template_loads_into_typed_params(tmp_path: Path) -> None:
    # given the rendered template, when loaded from a file
    p = load_params(write(tmp_path, TEMPLATE))
    # then every section is typed and the values are the template's
    assert isinstance(p, Params)
    assert isinstance(p.train, TrainParams)
    assert p.train.strategy in strategies.NAMES
    assert p.data.channels == 1 and p.data.image_size == 8
    assert isinstance(p.train.lr, float) and p.train.lr == pytest.approx(0.005)
    assert p.train.deterministic is True
    assert p == parse_params(raw())


def test_params_are_frozen(tmp_path: Path) -> None:
    p = load_params(write(tmp_path, TEMPLATE))
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.train.lr = 1.0  # type: ignore[misc]


def test_an_integer_is_accepted_for_a_float_and_becomes_a_float() -> None:
    r = raw()
    r["train"]["lr"] = 1
    p = parse_params(r)
    assert isinstance(p.train.lr, float) and p.train.lr == 1.0


# ---- unknown and missing keys ----------------------------------------------------------------


def test_unknown_key_is_named_with_its_dotted_path() -> None:
    r = raw()
    r["train"]["lrr"] = 0.1
    err = refused(r)
    assert "train.lrr" in str(err)
    assert "unknown" in str(err)


def test_unknown_top_level_section_is_refused() -> None:
    r = raw()
    r["extras"] = {"a": 1}
    assert "extras" in str(refused(r))


def test_unknown_key_is_refused_in_a_schema_1_file_too() -> None:
    r = yaml.safe_load(SCHEMA1)
    r["gate"]["min_acc"] = 0.5
    assert "gate.min_acc" in str(refused(r))


# ---- missing keys take their defaults ----------------------------------------------------------


def test_schema_1_file_lacking_keys_takes_the_defaults(tmp_path: Path) -> None:
    # given the previous release's file with a changed value and three keys left out
    text = without(SCHEMA1, "seed", "max_image_pixels", "min_class_accuracy")
    text = text.replace("  num_epochs: 12", "  num_epochs: 3")
    assert "seed" not in text and "min_class_accuracy" not in text and "schema" not in text
    # when loaded
    p = load_params(write(tmp_path, text))
    # then the missing keys have their defaults and the written ones their values
    assert p.train.seed == 0 and p.data.max_image_pixels == 25_000_000 and p.gate.min_class_accuracy == 0.1
    assert p.train.num_epochs == 3
    assert p == dataclasses.replace(Params(), train=dataclasses.replace(TrainParams(), num_epochs=3))


def test_missing_section_takes_the_defaults(tmp_path: Path) -> None:
    text = without_section(SCHEMA1, "gate").replace("  min_accuracy", "  nope")
    assert "gate" not in yaml.safe_load(text)
    p = load_params(write(tmp_path, text.replace("  lr: 0.005", "  lr: 0.004")))
    assert p.gate == GateParams()
    assert p.train.lr == pytest.approx(0.004)


def test_an_empty_mapping_is_all_defaults() -> None:
    assert parse_params({}) == Params()
    assert parse_params({"schema": 2, "train": {}}) == Params()


# ---- the schema --------------------------------------------------------------------------------


@pytest.mark.parametrize("schema", [1, 2])
def test_known_schemas_are_read(schema: int) -> None:
    r = raw()
    r["schema"] = schema
    assert parse_params(r) == Params()


def test_newer_schema_is_one_line_naming_both_versions(tmp_path: Path) -> None:
    path = write(tmp_path, TEMPLATE.replace(f"schema: {SCHEMA}", "schema: 3"))
    with pytest.raises(InputError) as info:
        load_params(path)
    assert str(info.value) == "params.yaml was written by a newer ratchet (schema 3); this one reads up to 2"
    assert info.value.exit_code == 2


@pytest.mark.parametrize("schema", ["two", True, 0, 1.5, None])
def test_schema_that_is_not_a_positive_integer_is_refused(schema: Any) -> None:
    r = raw()
    r["schema"] = schema
    assert "schema" in str(refused(r))


def test_section_that_is_not_a_mapping_is_refused() -> None:
    r = raw()
    r["train"] = [1, 2]
    err = refused(r)
    assert "train" in str(err) and "mapping" in str(err)


# ---- wrong types -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("train", "num_epochs", "12"),  # string for an int
        ("train", "num_epochs", True),  # bool for an int
        ("train", "num_epochs", 3.5),  # float for an int
        ("train", "lr", "fast"),  # string for a float
        ("train", "lr", False),  # bool for a float
        ("train", "deterministic", 1),  # int for a bool
        ("train", "deterministic", "yes"),  # string for a bool
        ("registry", "model_name", ""),  # empty string
        ("registry", "model_name", 7),  # int for a string
    ],
)
def test_wrong_type_is_refused_naming_the_key(section: str, key: str, value: Any) -> None:
    # given one value of the wrong type
    r = raw()
    r[section][key] = value
    # when parsed, then the error names the dotted key
    assert f"{section}.{key}" in str(refused(r))


# ---- out-of-range values and literals --------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("data", "held_out_fraction", 1.5),
        ("data", "held_out_fraction", 0.0),
        ("data", "channels", 2),
        ("data", "image_size", 4),
        ("model", "width", 0),
        ("model", "dropout", 1.0),
        ("train", "num_epochs", 0),
        ("train", "batch_size", -1),
        ("train", "lr", 0.0),
        ("train", "replay_fraction", 1.0),
        ("train", "seed", -1),
        ("train", "replay_memory_per_class", -1),
        ("gate", "min_accuracy", 1.01),
        ("gate", "max_old_drop_pt", -0.5),
    ],
)
def test_out_of_range_value_is_refused_naming_the_key(section: str, key: str, value: Any) -> None:
    r = raw()
    r[section][key] = value
    assert f"{section}.{key}" in str(refused(r))


def test_bad_strategy_literal_lists_the_allowed_ones() -> None:
    r = raw()
    r["train"]["strategy"] = "magic"
    msg = str(refused(r))
    assert "train.strategy" in msg and "'magic'" in msg
    assert "finetune" in msg and "replay" in msg


def test_bad_device_literal_is_refused() -> None:
    r = raw()
    r["train"]["device"] = "tpu"
    assert "train.device" in str(refused(r))


@pytest.mark.parametrize("strategy", strategies.NAMES)
def test_every_strategy_literal_is_accepted(strategy: str) -> None:
    r = raw()
    r["train"]["strategy"] = strategy
    assert parse_params(r).train.strategy == strategy


# ---- the file --------------------------------------------------------------------------------


def test_invalid_yaml_is_one_line_naming_the_line(tmp_path: Path) -> None:
    # given the template with a tab-indented line (YAML forbids tabs for indentation)
    lines = TEMPLATE.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("  experiment:"))
    lines[at] = "\t" + lines[at].lstrip()
    path = write(tmp_path, "\n".join(lines) + "\n")
    # when loaded
    with pytest.raises(InputError) as info:
        load_params(path)
    # then one line naming the file and the line
    msg = str(info.value)
    assert "\n" not in msg
    assert "not valid YAML" in msg and str(path) in msg
    assert f"(line {at + 1})" in msg
    assert info.value.exit_code == 2


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(InputError) as info:
        load_params(path)
    assert "not found" in str(info.value) and str(path) in str(info.value)
    assert info.value.exit_code == 2


def test_empty_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="mapping"):
        load_params(write(tmp_path, "# nothing here\n"))


def test_load_checks_ranges_too(tmp_path: Path) -> None:
    text = TEMPLATE.replace("held_out_fraction: 0.3", "held_out_fraction: 1.5")
    assert text != TEMPLATE
    with pytest.raises(InputError, match=r"data\.held_out_fraction"):
        load_params(write(tmp_path, text))


# ---- digest ----------------------------------------------------------------------------------


def test_digest_is_stable_across_loads_and_formatting(tmp_path: Path) -> None:
    # given the template and the same values dumped without comments, in another key order
    a = load_params(write(tmp_path, TEMPLATE))
    b = load_params(write(tmp_path, TEMPLATE))
    sections = {k: v for k, v in raw().items() if k != "schema"}
    reordered = {k: dict(reversed(list(v.items()))) for k, v in reversed(list(sections.items()))}
    c = load_params(write(tmp_path, yaml.safe_dump(reordered, sort_keys=False)))
    # then the digest is a short hex string and identical for all of them
    assert len(a.digest()) == 12
    int(a.digest(), 16)
    assert a.digest() == b.digest() == c.digest()


def test_digest_changes_when_a_value_changes() -> None:
    base = parse_params(raw())
    r = raw()
    r["train"]["lr"] = 0.006
    changed = parse_params(r)
    r2 = raw()
    r2["gate"]["min_accuracy"] = 0.61
    assert len({base.digest(), changed.digest(), parse_params(r2).digest()}) == 3


# ---- completing an existing file ---------------------------------------------------------------


def test_complete_adds_exactly_the_missing_keys_and_changes_nothing_else() -> None:
    # given the previous release's file (it predates the registry URIs and DER++) lacking two more
    # keys, with a user-changed value and a user comment
    text = without(SCHEMA1, "seed", "max_label_gap_pt")
    text = text.replace("  num_epochs: 12", "  num_epochs: 3   # we have little time")
    # when completed
    new, added = complete_params(text)
    # then exactly the missing keys are added, each at the end of its section with its comment
    assert added == [
        "schema",
        "registry.tracking_uri",
        "registry.registry_uri",
        "data.max_unpacked_bytes",
        "train.seed",
        "train.devices",
        "train.threads",
        "train.derpp_alpha",
        "train.derpp_beta",
        "gate.max_label_gap_pt",
        "review",
        "inbox",
        "remotes",
        "schedule",
    ]
    old_lines, new_lines = text.splitlines(), new.splitlines()
    inserted = [line for line in new_lines if line not in old_lines]
    assert [line.split(":")[0].strip() for line in inserted if not line.lstrip().startswith("#")] == [
        "schema",
        "tracking_uri",
        "registry_uri",
        "max_unpacked_bytes",
        "seed",
        "devices",
        "threads",
        "derpp_alpha",
        "derpp_beta",
        "max_label_gap_pt",
        "review",
        "approval",
        "wait_minutes",
        "inbox",
        "path",
        "ready_marker",
        "remotes",
        "dvc",
        "git",
        "schedule",
        "cron",
        "timezone",
        "debounce_seconds",
        "work_pool",
    ]
    it = iter(new_lines)
    assert all(line in it for line in old_lines)  # every old line kept, in order

    def at(prefix: str) -> int:
        return next(i for i, line in enumerate(new_lines) if line.startswith(prefix))

    assert at("  loader_workers: 2") < at("  seed: 0 ") < at("gate:")
    assert "# seeds the initial weights" in new_lines[at("  seed: 0 ")]
    assert new_lines[new_lines.index("registry:") - 1] == "schema: 2"
    p = parse_params(yaml.safe_load(new))
    assert p.train.num_epochs == 3 and p.train.seed == 0
    # and completing again adds nothing
    assert complete_params(new) == (new, [])


def test_complete_appends_a_missing_section_and_raises_an_old_schema() -> None:
    text = "schema: 1\n" + without_section(SCHEMA1, "gate")
    new, added = complete_params(text)
    assert added == [
        "schema",
        "registry.tracking_uri",
        "registry.registry_uri",
        "data.max_unpacked_bytes",
        "train.devices",
        "train.threads",
        "train.derpp_alpha",
        "train.derpp_beta",
        "gate",
        "review",
        "inbox",
        "remotes",
        "schedule",
    ]
    assert new.startswith("schema: 2\n")
    assert new.endswith(render_params()[render_params().index("gate:") :])


def test_complete_follows_the_file_s_indentation() -> None:
    text = "schema: 2\ntrain:\n    lr: 0.004\n\n# the gate\ngate:\n    alpha: 0.01\n"
    new, added = complete_params(text)
    assert "train.seed" in added and "gate.min_accuracy" in added and "registry" in added
    assert "\n    seed: 0 " in new and "\n  seed" not in new
    # the train keys go before the blank line and the comment that belong to the gate
    assert new.index("    loader_workers") < new.index("# the gate")
    p = parse_params(yaml.safe_load(new))
    assert p.train.lr == pytest.approx(0.004) and p.gate.alpha == pytest.approx(0.01)


def test_complete_refuses_a_section_it_cannot_add_lines_to() -> None:
    with pytest.raises(InputError, match="train.seed"):
        complete_params("train: {lr: 0.004}\n")


def test_complete_refuses_a_broken_file_without_adding_anything() -> None:
    with pytest.raises(InputError, match="train.lrr"):
        complete_params(without(SCHEMA1, "seed").replace("  lr:", "  lrr:"))


def test_the_digest_covers_tunables_not_where_the_stores_are() -> None:
    base = Params()
    moved = dataclasses.replace(
        base, registry=dataclasses.replace(base.registry, tracking_uri="http://127.0.0.1:5000")
    )
    tuned = dataclasses.replace(base, train=dataclasses.replace(base.train, lr=0.01))
    reviewed = dataclasses.replace(base, review=ReviewParams(approval="manual", wait_minutes=5.0))
    elsewhere = dataclasses.replace(base, inbox=InboxParams(path="/srv/drop", ready_marker="DONE"))
    shared = dataclasses.replace(base, remotes=RemoteParams(dvc="s3://team/data", git="ssh://git@host/ws"))
    later = dataclasses.replace(base, schedule=ScheduleParams(cron="*/5 * * * *", timezone="Europe/Paris"))
    assert moved.digest() == base.digest() == reviewed.digest() == elsewhere.digest() == shared.digest()
    assert base.digest() == later.digest()
    assert base.digest() != tuned.digest()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("cron", "0 * * *", "params: schedule.cron must be a cron expression of five fields"),
        ("cron", "every hour", "params: schedule.cron must be a cron expression of five fields"),
        ("timezone", "Mars/Olympus", "params: schedule.timezone is not a time zone, got 'Mars/Olympus'"),
        ("debounce_seconds", -1, "params: schedule.debounce_seconds must not be negative, got -1"),
    ],
)
def test_schedule_knobs_are_checked_in_one_line(key: str, value: object, message: str) -> None:
    with pytest.raises(InputError) as info:
        parse_params({"schedule": {key: value}})
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_schedule_defaults_are_hourly_in_utc() -> None:
    schedule = parse_params({}).schedule
    assert (schedule.cron, schedule.timezone, schedule.debounce_seconds, schedule.work_pool) == (
        "0 * * * *",
        "UTC",
        60,
        "ratchet",
    )
