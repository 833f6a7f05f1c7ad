"""Learning-rate factors by optimiser step: linear warm-up, then cosine, constant or warm-up-stable-decay.

`wsd` holds the rate after the warm-up and decays it linearly to `min_lr_ratio` over the last `decay_fraction`
of the budget. The budget is `max_steps` or `max_time`, whichever ends first: progress is the larger of the
share of steps done and the share of the time cap spent, so a run stopped by its time cap still ends on a
decayed rate (docs/legibility.md, "A moving average and a decayed rate").
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

from imuru_pl.errors import UserError

SCHEDULERS = ("cosine", "plateau", "constant", "wsd")


def lr_factor(cfg: Mapping, total_steps: int, time_progress: Callable[[], float] = lambda: 0.0
              ) -> Callable[[int], float]:
    """The factor on `optim.lr` at each step for `cfg.scheduler` (cosine, constant or wsd; plateau is
    Lightning's own)."""
    kind = cfg.get("scheduler", "cosine")
    if kind not in SCHEDULERS:
        raise UserError(f"optim.scheduler must be one of {', '.join(SCHEDULERS)}, not {kind!r}.")
    warmup = int(cfg.get("warmup_steps", 0))
    floor = float(cfg.get("min_lr_ratio", 0.0))
    fraction = float(cfg.get("decay_fraction", 0.2))
    if kind == "wsd" and not 0.0 < fraction <= 1.0:
        raise UserError(f"optim.decay_fraction must be in (0, 1], not {fraction}.")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        if kind == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        progress = max(step / max(1, total_steps), time_progress())
        into_decay = min(1.0, max(0.0, (progress - (1.0 - fraction)) / fraction))
        return 1.0 - (1.0 - floor) * into_decay

    return factor


def check_optim_config(cfg: Mapping) -> None:
    """The schedule and moving-average settings, checked before any stage trains (one sentence each)."""
    lr_factor(cfg, total_steps=1)
    decay = float(cfg.get("ema_decay", 0.0) or 0.0)
    if not 0.0 <= decay < 1.0:
        raise UserError(f"optim.ema_decay must be in [0, 1) (0 turns the moving average off), not {decay}.")
