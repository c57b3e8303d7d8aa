"""The rcan training config: seed defaults, typos with suggestions, ranges named with key and value."""

from __future__ import annotations

import json

import pytest

from scopert.errors import ConfigError
from scopert.training.rcan.config import RcanTrainConfig, load_rcan_config

DATA = {"training_data_dir": {"raw": "r", "gt": "g"}}


def test_defaults_are_the_seeds(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(DATA))
    cfg = load_rcan_config(path)
    assert isinstance(cfg, RcanTrainConfig)
    assert (cfg.epochs, cfg.steps_per_epoch, cfg.num_channels) == (300, 256, 32)
    assert (cfg.num_residual_blocks, cfg.num_residual_groups, cfg.channel_reduction) == (3, 5, 8)
    assert cfg.data_augmentation is True
    assert (cfg.intensity_threshold, cfg.area_ratio_threshold, cfg.initial_learning_rate) == (0.25, 0.5, 1e-4)
    assert (cfg.loss, cfg.metrics, cfg.batch_size, cfg.residual_scaling) == ("mae", ["psnr"], 1, 1.0)
    assert cfg.input_shape is None and cfg.time_limit_minutes is None and cfg.seed is None


def test_seed_example_config_loads():
    # 3D-RCAN's config.json overrides these keys.
    cfg = load_rcan_config(DATA | {"num_residual_groups": 3, "input_shape": [16, 256, 256],
                                   "metrics": ["psnr", "ssim"], "loss": "mse"})
    assert cfg.num_residual_groups == 3 and cfg.input_shape == [16, 256, 256]
    assert cfg.metrics == ["psnr", "ssim"] and cfg.loss == "mse"


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError) as err:
        load_rcan_config(DATA | {"epoch": 10})
    assert "'epoch'" in str(err.value) and "Did you mean 'epochs'" in str(err.value)
    with pytest.raises(ConfigError, match="Did you mean 'num_residual_groups'"):
        load_rcan_config(DATA | {"num_residual_group": 2})


@pytest.mark.parametrize(
    "key,value,range_text",
    [
        ("epochs", 0, ">= 1"),
        ("steps_per_epoch", -3, ">= 1"),
        ("area_ratio_threshold", 1.5, "0.0 ~ 1.0"),
        ("initial_learning_rate", 1e-7, ">= 1e-6"),
        ("intensity_threshold", -0.1, ">= 0"),
        ("batch_size", 0, ">= 1"),
        ("time_limit_minutes", 0, "> 0"),
    ],
)
def test_out_of_range_names_key_value_and_range(key, value, range_text):
    with pytest.raises(ConfigError) as err:
        load_rcan_config(DATA | {key: value})
    msg = str(err.value)
    assert key in msg and repr(value) in msg and range_text in msg


def test_wrong_types_and_choices():
    with pytest.raises(ConfigError, match="num_channels must be an integer"):
        load_rcan_config(DATA | {"num_channels": 16.5})
    with pytest.raises(ConfigError, match="data_augmentation must be true or false"):
        load_rcan_config(DATA | {"data_augmentation": "yes"})
    with pytest.raises(ConfigError, match="loss is 'l1'"):
        load_rcan_config(DATA | {"loss": "l1"})
    with pytest.raises(ConfigError, match="metrics"):
        load_rcan_config(DATA | {"metrics": ["psnr", "lpips"]})
    with pytest.raises(ConfigError, match="input_shape"):
        load_rcan_config(DATA | {"input_shape": [1, 2, 3, 4]})
    with pytest.raises(ConfigError, match="epochs must be an integer"):
        load_rcan_config(DATA | {"epochs": True})


def test_data_sections_are_checked():
    with pytest.raises(ConfigError, match="no training data"):
        load_rcan_config({"epochs": 3})
    with pytest.raises(ConfigError, match="Did you mean 'raw'"):
        load_rcan_config({"training_data_dir": {"rwa": "a", "gt": "b"}})
    with pytest.raises(ConfigError, match="training_image_pairs\\[0\\] needs a 'gt' path"):
        load_rcan_config({"training_image_pairs": [{"raw": "a"}]})
    cfg = load_rcan_config({"training_image_pairs": [{"raw": "a", "gt": "b"}]})
    assert cfg.training_image_pairs == [{"raw": "a", "gt": "b"}] and not cfg.has_validation


def test_channel_reduction_larger_than_channels():
    with pytest.raises(ConfigError, match="channel_reduction"):
        load_rcan_config(DATA | {"num_channels": 4, "channel_reduction": 8})


def test_bad_json_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{\"epochs\": 3,}")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_rcan_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_rcan_config(tmp_path / "missing.json")


def test_round_trip_through_dict():
    cfg = load_rcan_config(DATA | {"seed": 7, "time_limit_minutes": 1.5})
    again = load_rcan_config(cfg.to_dict())
    assert again == cfg
