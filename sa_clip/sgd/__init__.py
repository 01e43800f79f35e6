"""Many clipped-SGD chains at once (recursion (10) of the paper; maths in ``docs/theory.md``).

Modules, one job each:

* :mod:`~sa_clip.sgd.state`: :class:`ChainState`, :func:`sgd_init`, :func:`sgd_step` (one step
  of all chains, a pure function of the state);
* :mod:`~sa_clip.sgd.samplers`: the public seed helper :func:`make_generator` and the batch
  samplers (``iid``, ``epoch``, replay);
* :mod:`~sa_clip.sgd.recorder`: the records and the :class:`~sa_clip.Trajectory` they make;
* :mod:`~sa_clip.sgd.checkpoint`: save and restore (state, sampler, records, configuration)
  with the problem's fingerprint, a content digest and invariant checks;
* :mod:`~sa_clip.sgd.driver`: :func:`simulate_sgd`, a loop over the above.
"""

from .driver import SAMPLING, check_field, simulate_sgd
from .recorder import Recorder
from .samplers import MAX_SEED, make_generator
from .state import ChainState, StepInfo, sgd_init, sgd_step, step_direction

__all__ = ["simulate_sgd", "SAMPLING", "ChainState", "StepInfo", "sgd_init", "sgd_step",
           "step_direction", "make_generator", "MAX_SEED", "Recorder", "check_field"]
