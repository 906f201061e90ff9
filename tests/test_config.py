"""TrainConfig: flat dict round trip, strict keys and types, ranges."""
from __future__ import annotations

import pytest
from dataclasses import fields as dataclasses_fields

from meme.models import TrainConfig
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


def test_a_model_brings_its_own_keys_with_one_registry_line():
    """A model declares its keys next to its code; joining the registry makes them config keys with their help,
    checks, trial-name format and the refusal for other models, and the shared keys keep their order."""
    from dataclasses import dataclass

    from meme.config import SharedKeys, key, positive, train_config
    from meme.models import MODELS
    from meme.models.base import MultimodalModel

    @dataclass(frozen=True)
    class ToyKeys:
        toy_width: int = key(8, "the toy's width", name="w{}", only=True)

        @staticmethod
        def check(cfg):
            positive(cfg, "toy_width")

    class Toy(MultimodalModel):
        name = "toy"
        Keys = ToyKeys

    Config = train_config({**MODELS, "toy": Toy}, __name__)
    assert Config.keys() == [*TrainConfig.keys()[:TrainConfig.keys().index("lr")], "toy_width",
                             *TrainConfig.keys()[TrainConfig.keys().index("lr"):]]
    assert set(Config.keys()) - {"toy_width"} == set(TrainConfig.keys())
    assert Config(model="toy", toy_width=3).toy_width == 3
    assert Config.__dataclass_fields__["toy_width"].metadata["help"] == "the toy's width"
    with pytest.raises(MemeError, match="toy_width=0 must be a positive integer"):
        Config(model="toy", toy_width=0)
    with pytest.raises(MemeError, match=r"toy_width=3 is a key of model toy only; model 'meme' has no such part "
                                        r"\(leave it out, or use --model toy\)"):
        Config(model="meme", toy_width=3)
    assert Config(model="meme").toy_width == 8           # left at its default, another model does not mind it
    with pytest.raises(MemeError, match="unknown model 'toy'"):
        TrainConfig(model="toy")                          # not registered: not a model
    assert [f.name for f in dataclasses_fields(SharedKeys)] == [k for k in TrainConfig.keys()
                                                                 if k in SharedKeys.__dataclass_fields__]


def test_trial_names_read_each_keys_own_format():
    """The formats moved from the study module onto the keys: names are those the study module gave before."""
    from orchestration.study import trial_name

    cfg = TrainConfig(model="meme", supervision=0.25, observed="mnist+svhn:2, svhn:1", K=3, lam=1.5, meme_pseudo=False,
                      lr=1e-3, seed=2).to_dict()
    varying = ("K", "lam", "meme_pseudo", "lr", "paired_only", "beta", "pairings", "data_seed", "batch_size",
               "latent_dim", "n_pseudo")
    # printed by the study module of 6b907d8, where the formats were its own table
    assert trial_name(cfg, varying) == \
        "meme-pairings1-d0-f0.25-mnist+svhnx2_svhnx1-withunpaired-z0-K3-lam1.5-p100-nopseudo-beta1-lr0.001-b128-s2"


def test_the_config_module_knows_no_model_or_dataset():
    import ast
    from pathlib import Path

    import meme.config

    tree = ast.parse(Path(meme.config.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
        {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and m.startswith(("meme.models", "meme.data", "meme.nets"))}, imported
