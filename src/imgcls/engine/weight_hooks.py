"""Changes to the weights right after an optimizer step: airbench94's Lookahead and its
whitening bias frozen after a few epochs.

A hook runs on every rank with the same weights and step, so the ranks stay identical without
communicating. Its state (``state_dict``) goes into the checkpoint under its ``key``, so a run
resumed, mid-epoch included, continues bit for bit.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn


class WeightHook(Protocol):
    key: str

    def after_step(self, model: nn.Module, step: int) -> None:
        """``model`` (unwrapped) after optimizer step ``step`` (counted from 1)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Lookahead:
    """Every ``every`` steps, pull the weights and the BatchNorm statistics towards a slow
    average and continue from it: ``slow += (1 - d) * (fast - slow); fast = slow``, with ``d``
    growing as ``decay * (step / total_steps) ** 3``, so it is plain SGD early and an average of
    the last steps late (airbench94: every 5 steps, decay 0.95 ** 5). At the last step the
    weights become the slow ones."""

    key = "lookahead"

    def __init__(self, model: nn.Module, *, every: int, decay: float, total_steps: int) -> None:
        if every < 1 or not 0.0 <= decay < 1.0 or total_steps < 1:
            raise ValueError(f"bad lookahead every={every} decay={decay} "
                             f"total_steps={total_steps}")
        self.every, self.decay, self.total_steps = every, decay, total_steps
        self.slow = {k: v.detach().clone() for k, v in _averaged(model).items()}

    def after_step(self, model: nn.Module, step: int) -> None:
        if step % self.every == 0:
            self._pull(model, self.decay * (min(step, self.total_steps) / self.total_steps) ** 3)
        if step == self.total_steps:
            self._pull(model, 1.0)  # the run's weights are the slow ones

    @torch.no_grad()
    def _pull(self, model: nn.Module, decay: float) -> None:
        for name, fast in _averaged(model).items():
            slow = self.slow[name]
            slow.lerp_(fast, 1.0 - decay)
            fast.copy_(slow)

    def state_dict(self) -> dict[str, Any]:
        return {"slow": self.slow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in state["slow"].items():
            self.slow[name].copy_(value)


def _averaged(model: nn.Module) -> dict[str, torch.Tensor]:
    """The floating-point entries of the state_dict (weights, BatchNorm statistics): the
    tensors themselves, so writing them writes the model."""
    return {k: v for k, v in model.state_dict(keep_vars=True).items()
            if torch.is_floating_point(v)}


class FreezeAfter:
    """Parameters that train for the first ``steps`` optimizer steps and then keep the value
    they had then (airbench94 trains its whitening layer's bias for 3 epochs). Restoring the
    value after each step, rather than switching off ``requires_grad``, leaves the optimizer's
    parameter groups and DistributedDataParallel's gradient buckets as they were built."""

    key = "freeze_after"

    def __init__(self, parameters: dict[str, nn.Parameter], *, steps: int) -> None:
        if not parameters:
            raise ValueError("FreezeAfter needs at least one parameter")
        self.parameters, self.steps = parameters, steps
        self.frozen: dict[str, torch.Tensor] | None = None

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int) -> None:
        if step < self.steps:
            return
        if self.frozen is None:  # the step that ends the training of these parameters
            self.frozen = {k: p.detach().clone() for k, p in self.parameters.items()}
            return
        for name, p in self.parameters.items():
            p.copy_(self.frozen[name])

    def state_dict(self) -> dict[str, Any]:
        return {"frozen": self.frozen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        frozen = state.get("frozen")
        self.frozen = None if frozen is None else {k: v.clone() for k, v in frozen.items()}
