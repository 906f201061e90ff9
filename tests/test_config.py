"""TrainConfig: flat dict round trip, strict keys and types, ranges."""
from __future__ import annotations

import pytest

from meme.config import TrainConfig
from meme.errors import MemeError


def test_round_trip_and_int_to_float(tmp_path):
    cfg = TrainConfig(lr=1, supervision=1, K=3)
    assert isinstance(cfg.lr, float) and cfg.lr == 1.0
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    cfg.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == cfg
    assert cfg.replace(K=5).K == 5 and cfg.K == 3


@pytest.mark.parametrize("changes, message", [
    ({"epochs": 2.5}, "config key 'epochs' must be of type int, got 2.5"),
    ({"epochs": True}, "config key 'epochs' must be of type int, got True"),
    ({"lr": "fast"}, "config key 'lr' must be of type float, got 'fast'"),
    ({"lr": 0.0}, "lr=0.0 must be > 0"),
    ({"beta2": 1.0}, "beta2=1.0 must be in [0, 1)"),
    ({"batch_size": 0}, "batch_size=0 must be a positive integer"),
    ({"precision": "fp16"}, "unknown precision 'fp16'; valid: auto, fp32, bf16"),
    ({"device": "tpu"}, "unknown device 'tpu'; valid: auto, cpu, cuda, cuda:N"),
    ({"direction": "up"}, "unknown direction 'up'"),
    ({"learning_rate": 0.1}, "unknown config key(s) 'learning_rate'; valid keys: model, dataset,"),
])
def test_bad_values_name_the_key_and_what_is_valid(changes, message):
    with pytest.raises(MemeError) as e:
        TrainConfig.from_dict(changes)
    assert message in str(e.value)
