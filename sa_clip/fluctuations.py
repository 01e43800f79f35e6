r"""Fluctuations of clipped SGD near a stable equilibrium (the CLT; docs/theory.md#fluctuations).

Near a stable zero ``theta*`` of ``H`` with ``B = DH(theta*)`` and noise covariance
``S = Cov(M)`` at ``theta*``, the scaled error ``(theta(n) - theta*) / sqrt(a(n))`` is
asymptotically Gaussian with covariance ``Sigma`` solving the Lyapunov equation

* ``a(n) = a0 / n``:  ``(B - I/(2 a0)) Sigma + Sigma (B - I/(2 a0))^T = S``, valid when every
  eigenvalue of ``B`` has real part above ``1/(2 a0)``;
* ``a(n) = a0 / n^alpha``, ``1/2 < alpha < 1``: ``B Sigma + Sigma B^T = S``.

For per-sample clipping with minibatches of ``M`` samples drawn with replacement,
``Cov(M) = S_1 / M`` where ``S_1 = (1/N) sum_i (u_i - H)(u_i - H)^T`` is exact over the data.

Types: every function here returns torch tensors (float64 for :func:`clt_covariance` and
:func:`empirical_covariance`, which solve in numpy/scipy), as the rest of the library does, so
``float(x)`` of a one-parameter result and ``x.item()`` work. Inputs may be tensors or arrays.
"""

from __future__ import annotations

import numpy as np
import torch

from ._validate import check_nonneg_int, check_positive
from .meanfield import MeanField


def noise_covariance(field: MeanField, theta: torch.Tensor, batch_size: int = 1
                     ) -> torch.Tensor:
    """Exact covariance ``(P, P)`` of the per-sample-clipped update noise at ``theta`` (P,):
    ``S_1 / batch_size`` with ``S_1 = (1/N) sum_i u_i u_i^T - H H^T``, from
    :meth:`MeanField.update_moments` (chunked, through the field's engine and shards).

    >>> import sa_clip as sc
    >>> p = sc.problems.location_problem([-1.0, 1.0])
    >>> noise_covariance(sc.MeanField(p, sc.NoClip()), torch.zeros(1))
    tensor([[1.]], dtype=torch.float64)
    """
    m = check_nonneg_int("batch_size", batch_size, minimum=1)
    t = torch.as_tensor(theta) if not isinstance(theta, torch.Tensor) else theta
    if t.dim() != 1:
        raise ValueError(f"`theta` must have shape (P,), got {tuple(t.shape)}.")
    h, second = field.update_moments(t)
    return (second - torch.outer(h, h)) / m


def clt_covariance(jacobian: torch.Tensor | np.ndarray, noise_cov: torch.Tensor | np.ndarray, *,
                   a0: float, alpha: float = 1.0) -> torch.Tensor:
    """Predicted asymptotic covariance ``Sigma`` of ``(theta(n) - theta*) / sqrt(a(n))``.

    ``alpha = 1`` (``a(n) = a0/n``) solves ``(B - I/(2a0)) Sigma + Sigma (B - I/(2a0))^T = S`` and
    requires ``Re eig(B) > 1/(2 a0)``; ``1/2 < alpha < 1`` solves ``B Sigma + Sigma B^T = S``.

    >>> clt_covariance(np.array([[1.0]]), np.array([[2.0]]), a0=1.0)
    tensor([[2.]], dtype=torch.float64)
    """
    a0 = check_positive("a0", a0)
    alpha = check_positive("alpha", alpha)
    if not 0.5 < alpha <= 1.0:
        raise ValueError(f"`alpha` must lie in (1/2, 1] for the CLT, got {alpha}.")
    B = np.asarray(torch.as_tensor(jacobian).double().cpu().numpy() if isinstance(
        jacobian, torch.Tensor) else jacobian, dtype=np.float64)
    S = np.asarray(torch.as_tensor(noise_cov).double().cpu().numpy() if isinstance(
        noise_cov, torch.Tensor) else noise_cov, dtype=np.float64)
    if B.ndim != 2 or B.shape[0] != B.shape[1] or S.shape != B.shape:
        raise ValueError(f"`jacobian` and `noise_cov` must be square of the same shape, got "
                         f"{B.shape} and {S.shape}.")
    A = B - np.eye(len(B)) / (2 * a0) if alpha == 1.0 else B
    low = float(np.linalg.eigvals(A).real.min())
    if low <= 0:
        need = "1/(2 a0) = %.4g" % (1 / (2 * a0)) if alpha == 1.0 else "0"
        raise ValueError(f"the CLT needs every eigenvalue of DH above {need}; the smallest real "
                         f"part of the shifted matrix is {low:.4g}: increase `a0` or pick another "
                         f"equilibrium.")
    import scipy.linalg  # here, not at import (scipy costs ~0.5 s to import)

    return torch.from_numpy(np.ascontiguousarray(scipy.linalg.solve_continuous_lyapunov(A, S)))


def scaled_errors(theta: torch.Tensor, theta_star: torch.Tensor, rate: float) -> torch.Tensor:
    """``(theta_k - theta*) / sqrt(a(n))`` for chains ``theta (chains, P)`` at one step ``n``.

    >>> scaled_errors(torch.tensor([[2.0]]), torch.tensor([1.0]), 0.25)
    tensor([[2.]])
    """
    check_positive("rate", rate)
    return (theta - theta_star) / rate ** 0.5


def empirical_covariance(x: torch.Tensor) -> torch.Tensor:
    """Sample covariance ``(P, P)`` (float64) over the rows of ``x (chains, P)``, non-finite rows
    dropped.

    >>> empirical_covariance(torch.tensor([[0.0], [2.0]]))
    tensor([[2.]], dtype=torch.float64)
    """
    x = torch.as_tensor(x)
    if x.dim() != 2:
        raise ValueError(f"`x` must have shape (chains, P), got {tuple(x.shape)}.")
    x = x[torch.isfinite(x).all(-1)].double()
    if len(x) < 2:
        raise ValueError(f"need at least 2 finite chains for a covariance, got {len(x)}.")
    return torch.atleast_2d(torch.cov(x.T))


def trajectory_scaled_errors(run, theta_star: torch.Tensor, record: int = -1,
                             schedule=None) -> torch.Tensor:
    """``(theta_k(n) - theta*) / sqrt(a(n))`` for every chain of a :class:`~sa_clip.Trajectory`
    at one record (``n = run.steps[record]``), shape ``(chains, P)``.

    The step size ``a(n)`` comes from the run's own schedule (``run.meta["schedule"]``) unless
    ``schedule`` is given (needed for a ``FunctionSchedule``). Blown-up chains are NaN rows;
    :func:`empirical_covariance` drops them.

    >>> import sa_clip as sc
    >>> p = sc.problems.location_problem([-1.0, 1.0])
    >>> run = sc.simulate_sgd(p, sc.NoClip(), sc.Harmonic(1.0), steps=3, chains=2, seed=0)
    >>> trajectory_scaled_errors(run, torch.zeros(1)).shape
    torch.Size([2, 1])
    """
    from .schedules import Schedule, make_schedule, schedule_from_dict

    if schedule is None:
        if "schedule" not in run.meta:
            raise ValueError("`run` has no schedule in its meta data: pass `schedule`.")
        sched: Schedule = schedule_from_dict(run.meta["schedule"])
    else:
        sched = make_schedule(schedule)
    r = int(record)
    if not -run.records <= r < run.records:
        raise ValueError(f"`record` must index one of the {run.records} records, got {record}.")
    n = int(run.steps[r])
    theta_star = torch.as_tensor(theta_star, dtype=run.theta.dtype, device=run.theta.device)
    return scaled_errors(run.theta[:, r], theta_star.reshape(-1), float(sched(n)))
