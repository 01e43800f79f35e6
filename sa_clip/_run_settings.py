"""Per-problem settings of the ``sa-clip`` commands, kept free of torch so that the command
line resolves its options (and answers ``--help`` and bad arguments) before torch loads;
:mod:`sa_clip.problems.registry` re-exports them."""

from __future__ import annotations

from typing import Any

#: Settings the ``sa-clip`` commands use for a problem where the command line, ``--config`` and
#: ``--quick`` leave them unset (instead of the command's defaults, sized for the paper's
#: small network). One H of the digits CNN costs about 100 of the wine MLP's: float32 (torch
#: has no fast float64 convolution on the CPU), 32 chains x 600 steps, D_T(s) of 4 chains at
#: 6 starts, every 10th step recorded (the loss stage costs a forward pass over the data per
#: record and chain), a short noise run and a coarse portrait.
RUN_SETTINGS: dict[str, dict[str, Any]] = {
    "digits-cnn": dict(dtype="float32", steps=600, chains=32, record_every=10, starts=6,
                       tracking_chains=4, noise_chains=2, noise_steps=100, portrait_grid=9),
}

__all__ = ["RUN_SETTINGS"]
