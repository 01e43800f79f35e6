import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import sa_clip as sc
from problems import SharedTied, mlp_problem


def test_theta0_order_and_blocks():
    m = SharedTied()
    X = torch.randn(5, 3, dtype=torch.float64)
    p = sc.Problem(m, X, torch.randn(5, 2, dtype=torch.float64))
    ref = torch.nn.utils.parameters_to_vector(m.parameters())
    assert torch.equal(p.theta0, ref)
    assert [b.name for b in p.blocks] == [n for n, _ in m.named_parameters()]
    assert p.blocks[1].shape == () and p.blocks[1].numel == 1     # the 0-d scale
    assert p.P == ref.numel() and p.blocks[-1].stop == p.P
    # the caller's model is never modified
    p.model.W.data.zero_()
    assert m.W.abs().sum() > 0


def test_unit_groups():
    p = mlp_problem()
    sizes = p.layout.group_sizes("unit")
    # Linear(4,5): 5 rows of 4; bias(5) whole; Linear(5,3): 3 rows of 5; bias(3) whole
    assert sizes == [4] * 5 + [5] + [5] * 3 + [3]
    assert p.layout.group_sizes("layer") == [20, 5, 15, 3]


def test_loss_and_gradient_against_autograd():
    p = mlp_problem()
    model = p.model
    out = model(p.X)
    ref = ((out - p.y) ** 2).sum(1).mean()
    g = torch.autograd.grad(ref, list(model.parameters()))
    assert float(p.loss(p.theta0)) == pytest.approx(float(ref), rel=1e-13)
    assert torch.allclose(p.gradient(p.theta0), torch.cat([x.reshape(-1) for x in g]),
                          rtol=1e-12)
    both = torch.stack([p.theta0, 2 * p.theta0])
    assert p.loss(both).shape == (2,) and p.gradient(both).shape == (2, p.P)


def test_mse_output_n1_against_y_n():
    X = np.random.default_rng(0).normal(size=(6, 2))
    p = sc.Problem(nn.Linear(2, 1, dtype=torch.float64), X, X[:, 0])
    assert p.dtype == torch.float64 and p.loss(p.theta0).shape == ()


def test_float64_data_promotes_float32_model():
    p = sc.Problem(nn.Linear(2, 1), torch.randn(4, 2, dtype=torch.float64), torch.zeros(4))
    assert p.theta0.dtype == torch.float64 and p.y.dtype == torch.float64


def test_relu_warns():
    with pytest.warns(UserWarning, match=r"\(A1\)"):
        sc.Problem(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)),
                   torch.randn(4, 2), torch.zeros(4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sc.Problem(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)),
                   torch.randn(4, 2), torch.zeros(4))


def test_errors():
    X, y = torch.randn(4, 2), torch.zeros(4)
    lin = nn.Linear(2, 1)
    with pytest.raises(TypeError, match="`model` must be a torch.nn.Module"):
        sc.Problem("model", X, y)
    with pytest.raises(ValueError, match=r"`y` must have length N = 4"):
        sc.Problem(lin, X, torch.zeros(3))
    with pytest.raises(ValueError, match=r"`X` must be finite; found nan"):
        sc.Problem(lin, torch.tensor([[0.0, math.nan]] * 4), y)
    with pytest.raises(ValueError, match=r"`y` must be finite; found inf"):
        sc.Problem(lin, X, torch.tensor([0.0, 0, 0, math.inf]))
    with pytest.raises(ValueError, match=r"`loss` must be one of \['mse', 'cross_entropy'\]"):
        sc.Problem(lin, X, y, loss="hinge")
    with pytest.raises(TypeError, match="`loss` must be one of"):
        sc.Problem(lin, X, y, loss=3)
    with pytest.raises(ValueError, match="`X` is empty"):
        sc.Problem(lin, torch.zeros(0, 2), torch.zeros(0))
    clf = nn.Linear(2, 3)
    with pytest.raises(TypeError, match="`y` must hold integer class labels"):
        sc.Problem(clf, X, torch.tensor([0.0, 1.0, 2.0, 1.0]), loss="cross_entropy")
    with pytest.raises(ValueError, match=r"`y` labels must lie in \[0, 2\]"):
        sc.Problem(clf, X, torch.tensor([0, 1, 3, 1]), loss="cross_entropy")
    with pytest.raises(ValueError, match="`y` labels must lie"):
        sc.Problem(clf, X, torch.tensor([0, -1, 2, 1]), loss="cross_entropy")
    with pytest.raises(ValueError, match="one target per output"):
        sc.Problem(clf, X, y, loss="mse")
    with pytest.raises(TypeError, match="must return a scalar"):
        sc.Problem(clf, X, y, loss=lambda o, t: o)
    p = sc.Problem(lin, X, y)
    with pytest.raises(ValueError, match=r"`theta` must have shape \(P,\) or \(K, P\) with P = 3"):
        p.loss(torch.zeros(4))
    with pytest.raises(ValueError, match="`device`"):
        sc.Problem(lin, X, y, device="tpu9")


def test_zoo():
    from sa_clip import problems as zoo
    for name in zoo.PROBLEMS:
        p = zoo.make_problem(name)
        assert torch.isfinite(p.loss(p.theta0))
    X, y, task = zoo.load_dataset("diabetes")
    assert task == "regression" and abs(float(X.mean())) < 1e-12
    assert abs(float(X.std(0, unbiased=False).mean()) - 1) < 1e-12
    with pytest.raises(ValueError, match="`problem` must be one of"):
        zoo.make_problem("mnist")
    with pytest.raises(ValueError, match="`name` must be one of"):
        zoo.load_dataset("mnist")
