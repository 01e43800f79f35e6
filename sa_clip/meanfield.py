r"""The clipped mean field ``H(theta)`` and the SGD update it averages (docs/theory.md#mean-field).

.. math:: H(\theta) = \frac1N \sum_{i=1}^N \frac{g_i(\theta)}{c_i(\theta)},
          \qquad g_i = \nabla_\theta\, l_i(\theta),

with ``c_i`` the clipping factors of the rule (per group for layer- and unit-wise rules). The
limiting ODE of clipped SGD is ``d theta / d tau = -H(theta)``.

The per-sample work is done by an *engine* (:mod:`sa_clip.engine`), chosen once per field from
the registry :data:`ENGINES`: ``"vmap"`` computes per-sample gradients with ``torch.func``
(``vmap(grad(.))``), any model; ``"fast"`` (:mod:`sa_clip.fastpath`) serves stacks of
``Linear`` layers and element-wise activations with per-sample gradient norms instead (same
numbers, to round-off, at about the cost of one plain gradient); ``"layers"``
(:mod:`sa_clip.layers`) does the same layer by layer for convolutions, embeddings, norm layers,
attention and recurrent models. :attr:`MeanField.reason` says which one was chosen and why
(and, for ``"layers"``, which engine serves ``DH``). The field chunks the samples (bounded
memory), shards them over processes, and batches ``K`` parameter vectors (shape ``(K, P)``)
into one computation.

Types: everything returns torch tensors on the problem's device and dtype, except scalar
summaries of one ``theta`` (``ClipStats.fraction``), which are Python floats.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import jacfwd, vmap

from . import distributed as _dist
from ._validate import as_tensor, check_choice, check_finite, check_nonneg_int
from .clipping import ClipRule, make_rule
from .engine import Engine, ModelNotSupportedError, VmapEngine
from .fastpath import LinearStackEngine
from .layers import LayersEngine
from .problem import Problem, group_norms, iter_chunks

#: The engines, by the name passed as ``MeanField(..., engine=name)``. ``"auto"`` takes the
#: first that applies, in this order (the general ``"vmap"`` always applies, so an engine
#: registered after it is used only when asked for by name).
ENGINES: dict[str, type[Engine]] = {"fast": LinearStackEngine, "layers": LayersEngine,
                                    "vmap": VmapEngine}
ENGINE_CHOICES = ("auto", "vmap", "fast", "layers")   # the built-in choices
METHODS = ENGINE_CHOICES            # the old name, kept for callers that import it
CLIP_PER = ("sample", "batch")
#: On a CPU the default chunk also keeps its working set near this many bytes: a chunk's
#: element-wise passes then run from the last-level cache, and the allocator hands the same
#: memory back chunk after chunk instead of taking fresh pages from the kernel (a page fault
#: each; a full-batch pass over 20,000 samples of a 128-wide layer allocates 10 MiB per
#: intermediate). Measured on the MLP 64-128-128-10 (N = 20,000, 2 cores): chunks of 5,000
#: instead of one of 20,000 take the fast engine from 1.1-1.3x to 0.8-1.0x a plain gradient.
CPU_CHUNK_BYTES = 2 ** 24
#: ... unless that would mean chunks of fewer samples than this (per-chunk overheads, small
#: matrix products): then ``max_elements`` alone decides.
MIN_CHUNK = 1024

#: Modules whose training-mode behaviour couples samples or adds noise; evaluated in eval mode.
_TRAIN_MODE_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
                       nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                       nn.FeatureAlphaDropout)
_ANALYSES: weakref.WeakKeyDictionary[Problem, dict[str, tuple[Any, str | None]]] = \
    weakref.WeakKeyDictionary()
_NOTED: set[str] = set()          # notes given once per process


def _note_once(key: str, message: str, stacklevel: int = 5) -> None:
    if key not in _NOTED:
        _NOTED.add(key)
        warnings.warn(message, UserWarning, stacklevel=stacklevel)


class _Plans(dict):
    """``{engine name: (plan, why not)}``, each analysed when first looked up: ``"auto"``
    stops at the first engine that applies, so a Linear stack served by the fast engine never
    pays for the layers engine's probes and self-check, nor for the vmap engine's probe (the
    default ``sa-clip run``: 16.7 -> 12 s, 796 -> 590 MB, measured in docs/performance.md)."""

    def __init__(self, problem: Problem):
        super().__init__()
        self.problem = problem

    def __missing__(self, name: str) -> tuple[Any, str | None]:
        self[name] = ENGINES[name].analyse(self.problem)
        return self[name]


def analyse(problem: Problem) -> dict[str, tuple[Any, str | None]]:
    """The model-side analysis of ``problem`` for every engine, ``{name: (plan, why not)}``,
    computed once per problem and engine, when an engine is first considered (later fields
    on the same problem reuse it).

    The first analysis also says, once, what the user should know about the model: modules with
    a training mode (BatchNorm, Dropout) are evaluated in eval mode, and float32 is not the
    reference precision.
    """
    try:
        return _ANALYSES[problem]
    except (KeyError, TypeError):
        pass
    out = _Plans(problem)
    special = [f"{type(m).__name__} at {name!r}" for name, m in problem.model.named_modules()
               if isinstance(m, _TRAIN_MODE_MODULES)]
    if special:
        warnings.warn(
            f"the model has {', '.join(special)}: sa_clip evaluates it in eval mode "
            "(BatchNorm normalises with its fixed running statistics, Dropout is the "
            "identity), so each per-sample gradient is that of one deterministic network and "
            "samples do not interact. H is the mean field of that network, not of training-"
            "mode SGD, where batch statistics couple the samples of a batch and dropout masks "
            "add noise to every per-sample gradient.", UserWarning, stacklevel=4)
    if problem.dtype != torch.float64:
        name = str(problem.dtype).replace("torch.", "")
        _note_once("dtype", f"this problem is {name}: allowed, but float64 is the "
                   "reference precision (relative round-off about 1e-7 in H in float32, more in "
                   "Jacobians and near equilibria); build the problem with "
                   "dtype=torch.float64 for reference results. (Said once per session.)")
    try:
        _ANALYSES[problem] = out
    except TypeError:    # a problem that cannot be weakly referenced: analysed per field
        pass
    return out


class NonFiniteThetaError(ValueError, RuntimeError):
    """A NaN or infinite ``theta`` given to a :class:`MeanField`.

    A ``ValueError`` (bad input); also a ``RuntimeError``, so that code which treats a solver's
    ``RuntimeError`` as a failed solve (status -1, values kept) does the same when a flow it
    integrates through ``field(theta)`` leaves the finite numbers.
    """


def check_theta(problem: Problem, theta: Any, name: str = "theta"
                ) -> tuple[torch.Tensor, bool]:
    """``(theta as a (K, P) tensor of the problem's dtype, was_batched)``, refusing complex
    values (``ValueError``) and NaN or infinite ones (:class:`NonFiniteThetaError`, a
    ``ValueError``), the message naming ``name``."""
    t = as_tensor(name, theta)
    if t.is_complex():
        raise ValueError(f"`{name}` must be real, got a complex tensor ({t.dtype}); pass its "
                         f"real part explicitly if that is what you mean.")
    try:
        check_finite(name, t)                       # indices as the caller wrote them
        t, batched = problem.check_theta(t, name)
        check_finite(name, t)                       # a cast to the problem's dtype may overflow
    except NonFiniteThetaError:
        raise
    except ValueError as exc:
        if "must be finite" not in str(exc):
            raise
        raise NonFiniteThetaError(str(exc)) from None
    return t, batched


@dataclass(frozen=True)
class ClipStats:
    """How much clipping happens at a ``theta``.

    Attributes
    ----------
    factors : tensor ``(N, G)`` or ``(K, N, G)``
        Clipping factor ``c >= 1`` of each sample and group (``G = 1`` for global rules).
    fraction : float, or tensor ``(K,)`` for ``K`` parameter vectors
        Fraction of samples with some factor ``> 1`` (clipped somewhere).
    ratios : tensor like ``factors``
        ``||g_{i,G}|| / tau_G``, the quantity whose crossing of 1 switches clipping on
        (``c = max(ratio, 1)`` for the built-in rules); 0 for ``NoClip``, ``max_j |g_ij| / v``
        for ``ValueClip``.
    """

    factors: torch.Tensor
    fraction: Any
    ratios: torch.Tensor | None = None


class MeanField:
    """``H(theta)``, the mean of the clipped per-sample gradients over the data set.

    Main arguments
    --------------
    problem : Problem
    rule : ClipRule or a registry name such as ``"none"``

    Other arguments
    ---------------
    engine : ``"auto"`` | ``"vmap"`` | ``"fast"`` | ``"layers"``
        How per-sample quantities are computed (:mod:`sa_clip.engine`). ``"vmap"``: per-sample
        gradients from ``torch.func``, any model and rule. ``"fast"``: per-sample gradient
        norms without per-sample gradients (:mod:`sa_clip.fastpath`), for a ``Linear`` or a
        ``Sequential`` of ``Linear`` layers and element-wise activations and every rule but
        ``ValueClip``. ``"layers"``: per-layer norms from each layer's inputs and output
        gradients, then one reweighted gradient per layer (:mod:`sa_clip.layers`; the layers
        of docs/own-model.md, every rule but ``ValueClip``; ``DH`` by ``"vmap"``). ``"auto"``
        picks the first that applies, in that order: ``"fast"``, ``"layers"``, ``"vmap"``.
        The attribute ``method`` holds the name chosen, ``engine`` the engine, ``reason`` why
        it was chosen.
        ``method=`` is accepted as the old name of this argument.
    chunk_size : int, optional
        Samples per chunk. Default: as many as keep a chunk's working set (``K * chunk * P``
        per-sample gradients for ``"vmap"``, ``K * chunk`` times the layer widths for
        ``"fast"``) below ``max_elements``, and on a CPU also near :data:`CPU_CHUNK_BYTES`
        (about a last-level cache) unless that means fewer than :data:`MIN_CHUNK` samples;
        chunks are then balanced (20,000 samples in 4 x 5,000, not 3 x 5,874 + 2,378).
    max_elements : int
        Memory budget, in numbers, of one chunk.
    distributed : bool
        Shard the samples over the processes of an initialised ``torch.distributed`` process
        group (see :mod:`sa_clip.distributed`): rank ``r`` of ``W`` sums the clipped gradients
        of its contiguous samples ``[N r // W, N (r+1) // W)`` (uneven splits are fine) and the
        partial sums are all-reduced, so every rank returns the full ``H`` (and ``jacobian``,
        ``clip_stats``, ``update_moments``), bit-identical across ranks. Every rank must make
        the same calls in the same order (collectives). ``directions`` (SGD minibatches) is not
        sharded.
    group : torch.distributed.ProcessGroup, optional
        The group to shard over (default: the default group). Only with ``distributed=True``.

    The model is evaluated in eval mode (see :class:`~sa_clip.Problem`): a model with BatchNorm
    or Dropout gets a warning, once, saying what that means for per-sample gradients. A
    float32 problem gets a note, once per session, that float64 is the reference.

    Raises
    ------
    ValueError
        For ``engine="fast"`` or ``"layers"`` on a model or rule it does not cover (says why).
    ModelNotSupportedError
        (a ``ValueError``) when no engine can serve the model and rule: ``torch.func`` cannot
        take per-sample gradients through one of its modules (named), and neither ``"fast"``
        nor ``"layers"`` applies.

    Calling ``field(theta)`` with ``theta`` of shape ``(P,)`` returns ``(P,)``; with ``(K, P)``
    it returns ``(K, P)``. ``field.nfev`` counts evaluations (one per theta vector). ``theta``
    must be real and finite (``ValueError`` otherwise).

    Example
    -------
    >>> import torch, sa_clip as sc
    >>> X = torch.linspace(-1, 1, 8, dtype=torch.float64)[:, None]; y = 3 * X[:, 0]
    >>> p = sc.Problem(torch.nn.Linear(1, 1, bias=False), X, y, loss="mse")
    >>> field = sc.MeanField(p, sc.NormClip(0.5))
    >>> field(torch.zeros(1)).shape
    torch.Size([1])
    >>> field.reason.split(":")[0]
    'fast'
    """

    def __init__(self, problem: Problem, rule: ClipRule | str, *, engine: str = "auto",
                 method: str | None = None, chunk_size: int | None = None,
                 max_elements: int = 2 ** 24, distributed: bool = False, group: Any = None):
        if not isinstance(problem, Problem):
            raise TypeError(f"`problem` must be a sa_clip.Problem, got {type(problem).__name__}.")
        self.problem = problem
        self.rule = make_rule(rule) if isinstance(rule, str) else rule
        if not isinstance(self.rule, ClipRule):
            raise TypeError(f"`rule` must be a ClipRule or a rule name, got {rule!r}.")
        arg = "engine"
        if method is not None:
            if engine != "auto" and engine != method:
                raise ValueError(f"`method` is the old name of `engine`: pass one of them, got "
                                 f"engine={engine!r} and method={method!r}.")
            engine, arg = method, "method"
        check_choice(arg, engine, ("auto", *ENGINES))
        self.engine, self.reason = self._choose(engine, arg)
        self.method = self.engine.name
        self.chunk_size = None if chunk_size is None else check_nonneg_int(
            "chunk_size", chunk_size, minimum=1)
        self.max_elements = check_nonneg_int("max_elements", max_elements, minimum=1)
        if not isinstance(distributed, bool):
            raise TypeError(f"`distributed` must be True or False, got {distributed!r}.")
        if distributed and not _dist.is_active():
            raise ValueError("`distributed=True` needs an initialised torch.distributed process "
                             "group: launch with torchrun and call "
                             "sa_clip.distributed.init_from_env() (or "
                             "torch.distributed.init_process_group) first.")
        if group is not None and not distributed:
            raise ValueError(f"`group` is only used with distributed=True, got group={group!r} "
                             "with distributed=False.")
        self.distributed, self.group = distributed, group
        self._defer_reduce = False
        self.nfev = 0
        self._differentiable = False

    def _choose(self, wanted: str, arg: str) -> tuple[Engine, str]:
        """The engine for ``wanted`` (a name or ``"auto"``) and a one-line reason."""
        plans = analyse(self.problem)
        why_not: dict[str, str] = {}
        for name, cls in ENGINES.items():
            if wanted not in ("auto", name):
                continue
            plan, reason = plans[name]
            reason = cls.rule_reason(self.rule) or reason
            if reason is None:
                why = self._why(name, cls, wanted, arg, why_not)
                eng = cls(self.problem, self.rule, plan)
                if name == "layers":
                    vm_reason = plans["vmap"][1]
                    why += getattr(eng, "detail", "")
                    why += ("; DH (jacobian), several chains on their own minibatches and every "
                            "clipped per-sample gradient (update_moments): the vmap engine"
                            if vm_reason is None else
                            f"; DH (jacobian) is not available ({vm_reason})")
                return eng, why
            if name == "vmap" and plans["vmap"][1] is not None:
                raise ModelNotSupportedError(
                    f"no sa_clip engine can serve this model and rule: {plans['vmap'][1]}"
                    + "".join(f"; the {n} engine does not apply ({w})"
                              for n, w in why_not.items()) + ".")
            if wanted == name:
                raise ValueError(f"`{arg}`={name!r} does not apply: {reason}. Use {arg}='auto' "
                                 f"or 'vmap'.")
            why_not[name] = reason
        raise AssertionError("the vmap engine always applies")  # pragma: no cover

    @staticmethod
    def _why(name: str, cls: type[Engine], wanted: str, arg: str, why_not: dict[str, str]
             ) -> str:
        """The one-line reason for choosing engine ``name``."""
        if wanted == name:
            return f"{name}: requested ({arg}={name!r}); {cls.summary}"
        if why_not:
            return f"{name}: " + "; ".join(f"the {n} engine does not apply ({w})"
                                           for n, w in why_not.items())
        return f"{name}: {cls.summary}"

    def __repr__(self) -> str:
        return f"MeanField({self.problem.name!r}, {self.rule!r}, method={self.method!r})"

    # ------------------------------------------------------------------ helpers
    def _chunk(self, k: int, per: int | None = None) -> int:
        if self.chunk_size is not None:
            return self.chunk_size
        if k > 1 and per is None:          # an engine that takes the K rows one at a time
            one = self._chunk(1)           # holds one row's numbers per chunk
            if self.engine.loops_rows(k, one):
                return one
        per = self.engine.elements_per_sample if per is None else per
        p = self.problem
        n = p.N
        most = max(1, min(n, self.max_elements // max(1, k * per)))
        if p.device.type == "cpu":
            cached = CPU_CHUNK_BYTES // (p.dtype.itemsize * max(1, k * per))
            floor = getattr(self.engine, "min_chunk", None) or MIN_CHUNK
            most = min(most, max(floor, cached))
        pieces = -(-n // most)
        return -(-n // pieces)   # balanced: 20,000 in 10,000 + 10,000, not 19,000 + 1,000

    def _shard(self) -> slice:
        """The contiguous samples this process owns (all of them, in one process)."""
        if not self.distributed:
            return slice(0, self.problem.N)
        return _dist.shard(self.problem.N, *_dist.rank_and_world(self.group))

    def _slices(self, k: int, per: int | None = None):
        """The chunks of samples this process evaluates: its shard, chunk by chunk."""
        sh = self._shard()
        return (slice(sh.start + s.start, sh.start + s.stop)
                for s in iter_chunks(sh.stop - sh.start, self._chunk(k, per)))

    def _reduce(self, total: torch.Tensor) -> torch.Tensor:
        """Combine the partial sums of the processes (identity in one process)."""
        if not self.distributed or self._defer_reduce:
            return total
        return _dist.all_reduce_sum(total, self.group)

    def _gather(self, rows: list[torch.Tensor], k: int, g: int, like: torch.Tensor
                ) -> torch.Tensor:
        """This shard's per-sample rows ``(K, n_shard, G)`` joined, then all of ``N`` when
        distributed (every rank gets every sample's rows)."""
        c = torch.cat(rows, 1) if rows else like.new_zeros(k, 0, g)
        if self.distributed:
            c = _dist.all_gather_rows(c, self.problem.N, dim=1, group=self.group)
        return c

    def _n_groups(self) -> int:
        gran = self.rule.granularity
        if gran in ("global", "layer", "unit"):
            return self.problem.layout.groups(gran)[1]
        return 1

    # ------------------------------------------------------------------ the field
    def _h(self, theta: torch.Tensor) -> torch.Tensor:
        """``H`` for ``theta (K, P)``, differentiable in ``theta``."""
        # differentiable at zero gradient blocks when autograd or jacobian may look
        safe = self._differentiable or torch.is_grad_enabled()
        total = torch.zeros_like(theta)
        for s in self._slices(theta.shape[0]):
            total = total + self.engine.clipped_sum(theta, *self.problem.data(s), shared=True,
                                                    safe=safe)
        return self._reduce(total) / self.problem.N

    def _evaluate(self, t: torch.Tensor) -> torch.Tensor:
        """``H`` for a validated ``(K, P)`` tensor, no checks (the ODE solver's hot path:
        a NaN state there is the solver's failure to report, not a user error)."""
        self.nfev += t.shape[0]
        with torch.no_grad():
            return self._h(t)

    def __call__(self, theta: Any) -> torch.Tensor:
        """``H(theta)``: ``(P,) -> (P,)``, ``(K, P) -> (K, P)``."""
        t, batched = check_theta(self.problem, theta)
        h = self._evaluate(t)
        return h if batched else h[0]

    def jacobian(self, theta: Any) -> torch.Tensor:
        """``DH(theta)``, shape ``(P, P)`` (or ``(K, P, P)``), by forward-mode autodiff.

        Exact away from the clipping switch ``||g_i|| = tau``, where ``H`` has a kink: there
        it returns the derivative of the branch that is active at ``theta``.
        """
        t, batched = check_theta(self.problem, theta)
        # all_reduce cannot run inside jacfwd/vmap: differentiate this shard's part of H, then
        # sum the partial Jacobians (H is linear in the partial sums).
        self._defer_reduce = self._differentiable = True
        try:
            jac = vmap(jacfwd(lambda th: self._h(th.unsqueeze(0))[0]))(t)
        finally:
            self._defer_reduce = self._differentiable = False
        if self.distributed:
            jac = _dist.all_reduce_sum(jac, self.group)
        return jac if batched else jac[0]

    def clip_stats(self, theta: Any) -> ClipStats:
        """Clipping factors and ratios ``||g_G|| / tau_G`` of every sample and group, and the
        fraction of samples clipped (a float for one ``theta``, ``(K,)`` for ``K``).

        With ``distributed=True`` each rank computes its shard and the shards are
        all-gathered, so every rank returns the rows of all ``N`` samples.

        >>> import sa_clip as sc
        >>> p = sc.problems.location_problem([-3.0, 0.0, 3.0])
        >>> sc.MeanField(p, sc.NormClip(1.0)).clip_stats(torch.zeros(1)).fraction
        0.6666666666666666
        """
        p, rule = self.problem, self.rule
        t, batched = check_theta(p, theta)
        k, gran = t.shape[0], rule.granularity
        with torch.no_grad():
            if gran == "none":
                parts = [t.new_zeros(k, s.stop - s.start, 1) for s in self._slices(k)]
                ratios = self._gather(parts, k, 1, t)
                c = torch.ones_like(ratios)
            else:
                parts = [self.engine.group_norms(t, *p.data(s), shared=True)
                         for s in self._slices(k)]
                norms = self._gather(parts, k, self._n_groups(), t)
                if gran == "coordinate":       # ValueClip: max |g_ij| / v
                    ratios = norms / rule.v  # type: ignore[attr-defined]
                    c = torch.clamp(ratios, min=1.0)
                else:
                    tn = group_norms(t, p.layout, gran).unsqueeze(1) if rule.relative else None
                    ratios = norms / rule.thresholds(tn)
                    c = rule.factors(norms, tn)
        frac = (c > 1).any(-1).to(t.dtype).mean(-1)
        if batched:
            return ClipStats(c, frac, ratios)
        return ClipStats(c[0], float(frac[0]), ratios[0])

    def update_moments(self, theta: Any) -> tuple[torch.Tensor, torch.Tensor]:
        r"""First and second moments of the clipped per-sample updates ``u_i = g_i / c_i``:

        .. math:: m = \frac1N \sum_i u_i = H(\theta), \qquad
                  S_2 = \frac1N \sum_i u_i u_i^\top,

        shapes ``(P,)`` and ``(P, P)`` (``(K, P)``, ``(K, P, P)`` for ``K`` thetas); chunked
        over samples, through the engine, sharded and all-reduced when distributed. The noise
        covariance of one-sample updates is ``S_2 - m m^T``
        (:func:`sa_clip.noise_covariance`).

        >>> import sa_clip as sc
        >>> p = sc.problems.location_problem([-1.0, 1.0])
        >>> m, s2 = sc.MeanField(p, sc.NoClip()).update_moments(torch.zeros(1))
        >>> float(m), float(s2)
        (0.0, 1.0)
        """
        p = self.problem
        t, batched = check_theta(p, theta)
        k = t.shape[0]
        first = t.new_zeros(k, p.P)
        second = t.new_zeros(k, p.P, p.P)
        with torch.no_grad():
            for s in self._slices(k, per=p.P):
                u = self.engine.clipped_directions(t, *p.data(s), shared=True)   # (K, B, P)
                first += u.sum(1)
                second += u.transpose(1, 2) @ u
            first, second = self._reduce(first) / p.N, self._reduce(second) / p.N
        return (first, second) if batched else (first[0], second[0])

    # ------------------------------------------------------------------ stochastic updates
    def directions(self, theta: torch.Tensor, index: torch.Tensor, clip_per: str = "sample"
                   ) -> torch.Tensor:
        """The stochastic update directions ``u(theta_k; batch_k)``, shape ``(K, P)``.

        ``theta`` is ``(K, P)`` and ``index`` ``(K, B)`` holds each row's batch of sample
        indices. ``clip_per="sample"`` averages the clipped per-sample gradients (the paper,
        DP-SGD); ``"batch"`` clips the batch-mean gradient (``clip_grad_norm_``). No checks on
        ``theta`` (the SGD hot path; blown-up rows are the caller's to drop).
        """
        check_choice("clip_per", clip_per, CLIP_PER)
        if clip_per == "sample":
            x, y = self.problem.take(index)
            return self.engine.clipped_sum(theta, x, y, shared=False) / index.shape[1]
        return self._directions_stats(theta, index, clip_per)[0]

    def directions_stats(self, theta: torch.Tensor, index: torch.Tensor,
                         clip_per: str = "sample") -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`directions` and the fraction of each row's batch that was clipped, from one
        gradient pass: ``(u (K, P), fraction (K,))``.

        ``clip_per="sample"``: the fraction of the ``B`` samples with some factor ``c > 1``;
        ``"batch"``: 1.0 when the batch-mean gradient was clipped, else 0.0.
        """
        check_choice("clip_per", clip_per, CLIP_PER)
        return self._directions_stats(theta, index, clip_per)

    def _directions_stats(self, theta: torch.Tensor, index: torch.Tensor, clip_per: str
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        p, rule = self.problem, self.rule
        x, y = p.take(index)
        b = index.shape[1]
        if clip_per == "sample":
            total, c = self.engine.sum_and_factors(theta, x, y, shared=False)
            return total / b, (c > 1).any(-1).to(theta.dtype).mean(-1)
        gsum = self.engine.gradient_sum(theta, x, y, shared=False)
        u, c = rule.clip_and_factors(gsum, theta, p.layout, 1.0 / b, overwrite=True)
        return u, (c > 1).any(-1).to(theta.dtype)


__all__ = ["MeanField", "ClipStats", "ENGINES", "ModelNotSupportedError", "NonFiniteThetaError",
           "analyse", "check_theta"]
