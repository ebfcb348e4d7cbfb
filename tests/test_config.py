import dataclasses

import pytest

from detlab import config


@dataclasses.dataclass
class Example:
    data: config.DataConfig = dataclasses.field(default_factory=config.DataConfig)
    train: config.TrainConfig = dataclasses.field(default_factory=config.TrainConfig)
    name: str = "x"
    ratios: tuple[float, ...] = (0.5, 1.0)
    limit: int | None = None


def test_defaults_preset_values_overrides_in_order(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("train:\n  lr: 0.5\n  epochs: 3\nname: from-preset\n")
    resolved = config.resolve(
        Example,
        preset,
        ["train.lr=0.02", "ratios=[1, 2]", "limit=7", "data.horizontal_flip=false"],
        name="from-values",
    )
    assert resolved.train.lr == 0.02 and resolved.train.epochs == 3
    assert resolved.name == "from-values"
    assert resolved.ratios == (1.0, 2.0) and resolved.limit == 7
    assert resolved.data.horizontal_flip is False
    assert resolved.train.batch_size == config.TrainConfig().batch_size


def test_save_and_load_round_trip(tmp_path):
    original = config.resolve(
        Example, overrides=["train.optimizer=adamw", "ratios=[2, 3]", "data.cache_images=true"]
    )
    config.save(original, tmp_path / "c.yaml")
    assert config.load(Example, tmp_path / "c.yaml") == original


def test_bad_keys_and_values_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown config key train.lrr; TrainConfig has: out_dir"):
        config.resolve(Example, overrides=["train.lrr=1"])
    with pytest.raises(ValueError, match="key=value"):
        config.resolve(Example, overrides=["train.lr"])
    with pytest.raises(ValueError, match="data.horizontal_flip='maybe': expected bool .*expected a boolean"):
        config.resolve(Example, overrides=["data.horizontal_flip=maybe"])
    # a value of the wrong type names its key (it was a bare "could not convert string to float")
    with pytest.raises(ValueError, match="train.lr='abc': expected float"):
        config.resolve(Example, overrides=["train.lr=abc"])
    with pytest.raises(ValueError, match="train.optimizer='adam': choose one of sgd, adamw"):
        config.resolve(Example, overrides=["train.optimizer=adam"])
    with pytest.raises(FileNotFoundError, match="neither a file nor a bundled preset"):
        config.resolve(Example, "no-such-preset")
