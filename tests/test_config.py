"""RunConfig: resolution order, canonical params, condition identity, one-line errors."""

import pytest

from ncflow.engine.config import PRESETS, ConfigError, build_config, condition_hash, parse_field, run_name
from ncshared.run_config import RunConfig, field_help


def test_defaults_then_preset_then_overrides():
    config = build_config("paper-cifar-resnet20", {"lr": "0.05", "seed": "2"})
    assert config.arch == "resnet20" and config.optimizer == "sgd" and config.nesterov is True
    assert config.lr == 0.05  # the override beats the preset's 0.1
    assert config.milestones == (300, 450) and config.total_epochs == 800
    assert config.seed == 2 and config.width == 512  # untouched default


def test_params_are_canonical_strings():
    params = build_config(None, {"weight_decay": "2e-4", "milestones": "100, 200"}).as_params()
    assert params["weight_decay"] == "0.0002"
    assert params["milestones"] == "100,200"
    assert params["nesterov"] == "false"
    assert set(params) == set(field_help())  # every field has its comment, and every field is a param


def test_parse_field_types():
    assert parse_field("depth", "7") == 7
    assert parse_field("depth", 7.0) == 7
    assert parse_field("lr", "1e-3") == 0.001
    assert parse_field("nesterov", "True") is True
    assert parse_field("milestones", "300,450") == (300, 450)


def test_condition_hash_ignores_seed_and_where_to_log_but_not_science():
    base = build_config(None, {"depth": "7"})
    assert condition_hash(base) == condition_hash(base.replace(seed=3, device="cpu", experiment="other"))
    assert condition_hash(base) != condition_hash(base.replace(weight_decay=1e-4))
    assert len(condition_hash(base)) == 12
    # Intervention seeds start from different Phase-1 runs but are one condition.
    one = base.replace(init_from="aaa", rescale_alpha=0.3)
    assert condition_hash(one) == condition_hash(one.replace(init_from="bbb", seed=1))
    assert condition_hash(one) != condition_hash(base.replace(init_from="aaa", rescale_alpha=3.0))


def test_run_names_say_the_condition():
    assert run_name(build_config("paper-mnist-mlp")) == "mlp5-relu-w512-wd1e-04-mnist-s0"
    assert run_name(build_config("paper-cifar-resnet20", {"seed": "1"})) == "resnet20-wd1e-03-cifar10-s1"
    ce_only = build_config(None, {"protocol": "ce-only", "activation": "gelu", "depth": "3"})
    assert run_name(ce_only) == "mlp3-gelu-w512-wd2e-04-digits-ce-only-s0"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"depth": "0"}, "depth: expected an integer from 1 to 64, got 0"),
        ({"activation": "swish"}, "activation: 'swish' is not one of relu, gelu, tanh"),
        ({"weight_decay": "-1e-4"}, "weight_decay: expected a finite number >= 0, got -0.0001"),
        ({"nc1_threshold": "1.5"}, "nc1_threshold: expected auto or a number in (0, 1), got '1.5'"),
        ({"nc1_threshold": "0"}, "nc1_threshold: expected auto or a number in (0, 1), got '0'"),
        ({"fn_ref": "big"}, "fn_ref: expected none or auto or a number in (0, inf), got 'big'"),
        ({"depth": "seven"}, "depth: expected a whole number, got 'seven'"),
        ({"milestones": "300,4.5e2.0"}, "milestones: expected comma-separated whole numbers like 300,450, got"),
        ({"rescale_alpha": "inf"}, "rescale_alpha: expected a finite positive number, got inf"),
        ({"rescale_alpha": "0.3"}, "rescale_alpha: only applies with init_from=<run id>"),
        ({"stop_after_collapse": "soon"}, "stop_after_collapse: expected off or a whole number of epochs"),
        ({"colour": "red"}, "unknown parameter 'colour'"),
        ({"synthetic_shape": "8x8"}, "synthetic_shape: expected CxHxW like 1x8x8, got '8x8'"),
    ],
)
def test_bad_values_give_one_line_naming_the_parameter(overrides, message):
    with pytest.raises(ConfigError) as error:
        build_config(None, overrides)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="preset: unknown preset 'paper-imagenet'"):
        build_config("paper-imagenet")


def test_phase_of_each_protocol():
    config = RunConfig(phase1_epochs=2, phase2_epochs=3)
    assert [config.phase_of(e) for e in range(1, 6)] == [1, 1, 2, 2, 2]
    assert config.replace(protocol="ce-only").phase_of(5) == 1
    assert config.replace(protocol="mse-only").phase_of(1) == 2


def test_presets_are_valid_configs():
    for name in PRESETS:
        build_config(name)
