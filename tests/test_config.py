"""Strict params: every problem is one InputError line (exit code 2) that names the dotted key."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from ratchet.config import STRATEGIES, Params, TrainParams, load_params, parse_params
from ratchet.errors import InputError
from ratchet.workspace import template

TEMPLATE = template("params.yaml")
RAW: dict[str, Any] = yaml.safe_load(TEMPLATE)


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


# ---- the template ----------------------------------------------------------------------------


def test_template_loads_into_typed_params(tmp_path: Path) -> None:
    # given the shipped template, when loaded from a file
    p = load_params(write(tmp_path, TEMPLATE))
    # then every section is typed and the values are the template's
    assert isinstance(p, Params)
    assert isinstance(p.train, TrainParams)
    assert p.train.strategy in STRATEGIES
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


def test_missing_key_is_named_with_its_dotted_path() -> None:
    r = raw()
    del r["train"]["seed"]
    err = refused(r)
    assert "missing" in str(err) and "train.seed" in str(err)


def test_keys_with_a_default_may_be_left_out() -> None:
    # params.yaml written before registry.tracking_uri and registry.registry_uri existed still loads
    r = raw()
    del r["registry"]["tracking_uri"], r["registry"]["registry_uri"]
    p = parse_params(r)
    assert p.registry.tracking_uri is None and p.registry.registry_uri is None
    assert p == parse_params(raw())


def test_store_uris_are_strings_when_set() -> None:
    r = raw()
    r["registry"]["tracking_uri"] = "http://mlflow:5000"
    assert parse_params(r).registry.tracking_uri == "http://mlflow:5000"
    r["registry"]["tracking_uri"] = ""
    assert "registry.tracking_uri" in str(refused(r))


def test_missing_section_is_named() -> None:
    r = raw()
    del r["gate"]
    err = refused(r)
    assert "missing" in str(err) and "gate" in str(err)


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


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_literal_is_accepted(strategy: str) -> None:
    r = raw()
    r["train"]["strategy"] = strategy
    assert parse_params(r).train.strategy == strategy


# ---- the file --------------------------------------------------------------------------------


def test_invalid_yaml_is_one_line_naming_the_line(tmp_path: Path) -> None:
    # given the template with a tab-indented 4th line (YAML forbids tabs for indentation)
    lines = TEMPLATE.splitlines()
    assert lines[3].startswith("  experiment:")
    lines[3] = "\t" + lines[3].lstrip()
    path = write(tmp_path, "\n".join(lines) + "\n")
    # when loaded
    with pytest.raises(InputError) as info:
        load_params(path)
    # then one line naming the file and the line
    msg = str(info.value)
    assert "\n" not in msg
    assert "not valid YAML" in msg and str(path) in msg
    assert "(line 4)" in msg
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
    reordered = {k: dict(reversed(list(v.items()))) for k, v in reversed(list(raw().items()))}
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
