from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
import yaml

from dismax.config import from_dict, load_config, parse_overrides, save_config, to_dict
from dismax.errors import DismaxConfigError


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    schedule: Optional[str] = None


@dataclass(frozen=True)
class Model:
    name: str = "toy"
    kind: Literal["max", "mean"] = "mean"
    widths: tuple[int, ...] = (8, 8)


@dataclass(frozen=True)
class ToyConfig:
    model: Model = field(default_factory=Model)
    optim: Optim = field(default_factory=Optim)
    seed: int = 0
    augment: bool = True


def test_defaults_and_nested_values():
    cfg = from_dict(ToyConfig, {"model": {"widths": [4, 5, 6]}, "optim": {"lr": 1}})
    assert cfg.model.widths == (4, 5, 6)
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.5, 0.999)
    with pytest.raises(Exception):
        cfg.seed = 3  # frozen


def test_unknown_key_lists_valid_keys():
    with pytest.raises(DismaxConfigError) as err:
        from_dict(ToyConfig, {"optim": {"learning_rate": 0.1}})
    message = str(err.value)
    assert "optim.learning_rate" in message and "betas, lr, schedule" in message


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"seed": "three"}, "seed' must be an integer"),
        ({"augment": 1}, "augment' must be true or false"),
        ({"model": {"kind": "sum"}}, "must be one of ['max', 'mean']"),
        ({"optim": {"betas": [0.5]}}, "must have 2 entries"),
        ({"model": 3}, "must be a mapping"),
    ],
)
def test_type_errors_name_the_key(data, fragment):
    with pytest.raises(DismaxConfigError, match=None) as err:
        from_dict(ToyConfig, data)
    assert fragment in str(err.value)


def test_overrides_yaml_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "toy"}, "seed": 1}))
    cfg = load_config(path, ["seed=7", "optim.lr=2e-4", "optim.schedule=step", "model.widths=[1,2]"],
                      config_class=ToyConfig)
    assert (cfg.seed, cfg.optim.lr, cfg.optim.schedule, cfg.model.widths) == (7, 2e-4, "step", (1, 2))
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml", config_class=ToyConfig)
    assert again == cfg and to_dict(again) == to_dict(cfg)


def test_bad_override_syntax():
    with pytest.raises(DismaxConfigError, match="key=value"):
        parse_overrides(["seed"])


def test_unknown_model_name(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: nonsense\n")
    with pytest.raises(DismaxConfigError, match="valid model names are: cryingan"):
        load_config(path)
