"""``imgcls lr-find``: an LR range test with the run's own data, model, optimiser, loss and speed
switches (:func:`imgcls.engine.setup.prepare_run`, as ``imgcls train`` sets a run up)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgcls import runtime
from imgcls.config import Config, build_config
from imgcls.data.pipeline import source_defaults
from imgcls.engine.lr_finder import lr_sweep, save_sweep
from imgcls.engine.setup import UserData, load_data, prepare_run
from imgcls.errors import ImgclsError
from imgcls.tracking import echo

MAX_LR_FIND_STEPS = 1000  # a range test is a few hundred steps; more is a training run


@dataclass
class LrFindResult:
    suggestion: float | None  # None: the curve did not say (see ``how``)
    how: str  # how the suggestion was chosen, in one sentence
    csv: Path
    png: Path
    steps: int  # steps taken (fewer than asked when the loss diverged)
    stopped_early: bool


def lr_find(
    cfg: Config | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    output: str | Path = ".",
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
) -> LrFindResult:
    """An LR range test with the run's own data, model, optimiser, loss and speed switches:
    ``num_steps`` training steps while the lr grows exponentially from ``start_lr`` to
    ``end_lr``; writes ``lr_find.csv`` and ``lr_find.png`` to ``output`` and suggests an lr.

    Nothing else is written: no run folder, no checkpoint (``output`` may not be a run folder).
    Each step is one batch (``train.accumulate`` and the schedule's warmup do not apply).

    >>> lr_find(build_config(overrides={"data.source": "my_images"})).suggestion  # doctest: +SKIP
    """
    cfg = source_defaults(build_config(cfg, overrides))
    out = Path(output)
    _check_arguments(out, start_lr, end_lr, num_steps)
    runtime.configure_determinism(cfg.train.deterministic)
    runtime.seed_everything(cfg.train.seed)
    device = runtime.resolve_device(cfg.train.device)
    runtime.configure_speed(device, cudnn_benchmark=cfg.train.cudnn_benchmark,
                            deterministic=cfg.train.deterministic, tf32=cfg.train.tf32)
    data = load_data(cfg, None, UserData(), echo)
    run = prepare_run(cfg, data, device=device, say=echo, wrap=False)
    state = run.state
    sweep = lr_sweep(state.model, state.optimizer, state.loss_fn, _endless(run.loaders.train),
                     device=device, start_lr=start_lr, end_lr=end_lr, num_steps=num_steps,
                     speed=state.speed, scaler=state.scaler)
    try:
        csv_path, png_path = save_sweep(sweep, out)
    except OSError as exc:
        raise ImgclsError(f"cannot write the LR finder's files to {out}: "
                          f"{exc.strerror or exc}") from None
    return LrFindResult(sweep.suggestion, sweep.how, csv_path, png_path, len(sweep.lrs),
                        sweep.stopped_early)


def _check_arguments(out: Path, start_lr: float, end_lr: float, num_steps: int) -> None:
    if (out / "checkpoints").exists() or (out / "metrics.jsonl").exists():
        raise ImgclsError(f"--output {out} is a run folder; lr-find never writes into a run, "
                          "choose another folder")
    if not 0 < start_lr < end_lr or not math.isfinite(end_lr):
        raise ImgclsError(f"--start-lr {start_lr:g} and --end-lr {end_lr:g}: need "
                          "0 < start < end")
    if not 10 <= num_steps <= MAX_LR_FIND_STEPS:
        raise ImgclsError(f"--steps {num_steps}: choose 10 to {MAX_LR_FIND_STEPS}")


def _endless(loader: Any) -> Iterator[Any]:
    """Batches of epoch after epoch, each epoch drawn as training would draw it."""
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader
