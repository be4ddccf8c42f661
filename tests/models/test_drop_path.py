"""``model.drop_path``: torchvision's stochastic depth, set from the config."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import StochasticDepth

from imgcls.config import ModelConfig, build_config
from imgcls.errors import ImgclsError
from imgcls.models import create_model


def _depth_probs(model: torch.nn.Module) -> list[float]:
    return [m.p for m in model.modules() if isinstance(m, StochasticDepth)]


@pytest.mark.parametrize("name", ["convnext_tiny", "efficientnet_b0"])
def test_drop_path_sets_the_architectures_schedule(name):
    default = _depth_probs(create_model(ModelConfig(name=name), 3))
    model = create_model(build_config(overrides={"model.name": name,
                                                 "model.drop_path": 0.3}).model, 3)
    probs = _depth_probs(model)
    assert len(probs) == len(default) > 0
    assert max(probs) == pytest.approx(0.3, abs=0.02) and max(default) != pytest.approx(0.3)
    assert probs == sorted(probs)  # rising through the blocks, as torchvision schedules it
    model.train()
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 3)


@pytest.mark.parametrize("name", ["resnet18", "simple_v3"])
def test_a_model_without_stochastic_depth_refuses_it_in_one_line(name):
    with pytest.raises(ImgclsError, match=f"model.drop_path.*{name}") as caught:
        create_model(build_config(overrides={"model.name": name,
                                             "model.drop_path": 0.1}).model, 3)
    assert "\n" not in str(caught.value)


def test_the_range_is_checked():
    with pytest.raises(ImgclsError, match=r"model.drop_path = 1.0 is invalid: must be in \[0, 1\)"):
        build_config(overrides={"model.drop_path": 1.0})
