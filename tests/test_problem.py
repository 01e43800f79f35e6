import math
import warnings

import helpers
import numpy as np
import pytest
import torch
from torch import nn

import sa_clip as sc
from problems import ALL_RULES, SharedTied, brute_H, mlp_problem


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
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"`device` is 'cuda' but CUDA is not available"):
            sc.Problem(lin, X, y, device="cuda")
    with pytest.raises(ValueError, match=r"`model` cannot be applied to `X` \(one sample of "
                                         r"shape \(\), dtype torch.float32\)\. The model raised"):
        sc.Problem(lin, torch.zeros(4), y)                  # 1-d X: one number per sample


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


# ---------------------------------------------------------------- frozen parameters
def _frozen_problem(loss="mse"):
    g = torch.Generator().manual_seed(4)
    X = torch.randn(9, 3, generator=g, dtype=torch.float64)
    y = (torch.randint(0, 2, (9,), generator=g) if loss == "cross_entropy"
         else torch.randn(9, 2, generator=g, dtype=torch.float64))
    m = nn.Sequential(nn.Linear(3, 4, dtype=torch.float64), nn.Tanh(),
                      nn.Linear(4, 2, dtype=torch.float64))
    m[0].weight.requires_grad_(False)            # a frozen first-layer weight
    return m, sc.Problem(m, X, y, loss)


def test_frozen_parameters_are_not_in_theta_and_held_fixed():
    m, p = _frozen_problem()
    assert [b.name for b in p.blocks] == ["0.bias", "2.weight", "2.bias"]
    assert p.P == 4 + 8 + 2 and list(p.frozen) == ["0.weight"]
    assert torch.equal(p.frozen["0.weight"], m[0].weight)
    assert torch.equal(p.theta0, torch.cat([m[0].bias, m[2].weight.reshape(-1), m[2].bias]))
    # the outputs use the frozen value held in the problem: exactly the module's
    out = p.outputs(p.theta0, p.X)
    assert torch.allclose(out, m(p.X), rtol=0, atol=1e-15)
    # unclipped gradient = autograd on the module, trainable parameters only
    loss = ((m(p.X) - p.y) ** 2).sum(1).mean()
    ref = torch.autograd.grad(loss, [q for q in m.parameters() if q.requires_grad])
    assert helpers.rel_err(p.gradient(p.theta0), torch.cat([r.reshape(-1) for r in ref])) < 1e-13


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_frozen_parameters_h_matches_brute_force_loop(loss):
    _, p = _frozen_problem(loss)
    th = p.theta0 + 0.4 * torch.randn(p.P, generator=torch.Generator().manual_seed(1),
                                      dtype=torch.float64)
    for rule in ALL_RULES:
        h = sc.MeanField(p, rule)(th)
        assert h.shape == (p.P,)
        assert helpers.rel_err(h, brute_H(p, rule, th)) < 1e-12, rule


def test_frozen_layer_is_not_trained_by_sgd():
    m, p = _frozen_problem()
    before = m[0].weight.detach().clone()
    run = sc.simulate_sgd(p, sc.NormClip(0.5), "harmonic:0.5", steps=30, chains=3, seed=0)
    assert run.theta.shape == (3, run.records, p.P)
    assert bool((run.theta[:, -1] != run.theta[:, 0]).any(-1).all())    # the rest moves
    assert torch.equal(p.frozen["0.weight"], before) and torch.equal(m[0].weight, before)
    assert torch.equal(p.model[0].weight, before)


def test_all_parameters_frozen_is_refused():
    lin = nn.Linear(2, 1)
    lin.requires_grad_(False)
    with pytest.raises(ValueError, match="`model` has no trainable parameters"):
        sc.Problem(lin, torch.randn(4, 2), torch.zeros(4))


# ---------------------------------------------------------------- Problem.to, loss_spec
def test_to_converts_model_data_and_frozen_parameters():
    m, p = _frozen_problem()
    p32 = p.to(dtype=torch.float32)
    assert p32 is not p and p.dtype == torch.float64            # the original is unchanged
    assert p32.dtype == p32.theta0.dtype == p32.X.dtype == p32.y.dtype == torch.float32
    assert p32.frozen["0.weight"].dtype == torch.float32 and p32.P == p.P
    ref = sc.Problem(m.float(), p.X.float(), p.y.float())
    assert torch.equal(p32.loss(p32.theta0), ref.loss(ref.theta0))
    assert p.to("cpu").device == torch.device("cpu")
    assert p.loss_spec == "mse" and p._loss == "mse"              # old private name kept
    with pytest.raises(TypeError, match="`dtype` must be a floating dtype"):
        p.to(dtype=torch.int64)


def test_to_rechecks_data_in_a_narrower_dtype():
    X = torch.tensor([[1.0], [1e300]], dtype=torch.float64)
    p = sc.Problem(nn.Linear(1, 1, dtype=torch.float64), X, torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"`X` must be finite; found inf at index \(1, 0\)"):
        p.to(dtype=torch.float32)


# ---------------------------------------------------------------- data sources
def test_problem_holds_a_data_source_of_any_kind():
    X, y = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    lin = nn.Linear(2, 1, dtype=torch.float64)
    p = sc.Problem(lin, X, y)
    assert p.in_memory and isinstance(p.source, sc.TensorData) and p.X is p.source.X
    q = sc.Problem(lin, data=sc.ArrayData(X.numpy(), y.numpy()))
    r = sc.Problem(lin, sc.ArrayData(X.numpy(), y.numpy()))     # a source alone in X
    for other in (q, r):
        assert not other.in_memory and not hasattr(other, "X") and not hasattr(other, "y")
        assert torch.equal(other.loss(p.theta0), p.loss(p.theta0))
        idx = torch.tensor([[5, 0], [2, 2]])
        assert all(torch.equal(a, b) for a, b in zip(other.take(idx), p.take(idx)))
    with pytest.raises(TypeError, match="either as `X` and `y` or as `data`"):
        sc.Problem(lin, X, y, data=q.source)
    with pytest.raises(TypeError, match="`X` and `y` are required"):
        sc.Problem(lin, X)
    with pytest.warns(DeprecationWarning, match="use Problem\\(model, data=source"):
        s = sc.StreamedProblem(lin, q.source, "mse")
    assert isinstance(s, sc.Problem) and not s.in_memory


def test_bad_inputs_name_the_argument():
    lin = nn.Linear(3, 1, dtype=torch.float64)
    y = torch.zeros(5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"`model` cannot be applied to `X` \(one sample of "
                                         r"shape \(3,\), dtype torch.int64\): `X` has dtype "
                                         r"torch.int64.*convert with X.to\(torch.float64\)"):
        sc.Problem(lin, torch.ones(5, 3, dtype=torch.int64), y)
    with pytest.raises(ValueError, match=r"first Linear layer takes in_features = 3 inputs per "
                                         r"sample, `X` has 4"):
        sc.Problem(lin, torch.ones(5, 4, dtype=torch.float64), y)
    with pytest.raises(TypeError, match=r"`X` must be real .* got dtype torch.complex128"):
        sc.Problem(lin, torch.ones(5, 3, dtype=torch.complex128), y)
    with pytest.raises(TypeError, match=r"`y` must be real .* got dtype torch.complex64"):
        sc.Problem(lin, torch.ones(5, 3), torch.ones(5, dtype=torch.complex64))
    with pytest.raises(TypeError, match=r"`X` must hold numbers .* got dtype <U1"):
        sc.ArrayData(np.array([["a"]] * 5), np.zeros(5))
    emb = nn.Sequential(nn.Embedding(4, 2), nn.Flatten(), nn.Linear(2, 1))   # integer X works
    p = sc.Problem(emb, torch.tensor([[0], [3], [1]]), torch.zeros(3))
    assert p.X.dtype == torch.int64 and torch.isfinite(p.loss(p.theta0))


def test_check_theta_refuses_empty_nonfinite_and_complex():
    p = mlp_problem()
    f = sc.MeanField(p, sc.NormClip(0.5))
    for call in (p.loss, p.gradient, f, f.jacobian, f.clip_stats):
        with pytest.raises(ValueError, match=rf"`theta` must hold at least one parameter "
                                             rf"vector: got shape \(0, {p.P}\)"):
            call(torch.zeros(0, p.P, dtype=torch.float64))
        bad = p.theta0.clone()
        bad[3] = math.nan
        with pytest.raises(ValueError, match=r"`theta` must be finite; found nan at index \(3,\)"):
            call(bad)
        bad[3] = -math.inf
        with pytest.raises(ValueError, match=r"`theta` must be finite; found -inf"):
            call(torch.stack([p.theta0, bad]))
        with pytest.raises(ValueError, match=r"`theta` must be real"):
            call(p.theta0.to(torch.complex128))
    t, batched = p.check_theta([float("nan")] * p.P, finite=False)   # internal callers
    assert t.shape == (1, p.P) and not batched and torch.isnan(t).all()
    big = torch.full((p.P,), 1e300, dtype=torch.float64)               # finite in float64,
    with pytest.raises(ValueError, match=r"found inf .* in torch.float32"):  # not in float32
        p.to(dtype=torch.float32).check_theta(big)


# ---------------------------------------------------------------- the zoo's sizes
@pytest.mark.parametrize("n, err, message", [
    (-5, ValueError, r"`n` must be an integer >= 1, got -5"),
    (0, ValueError, r"`n` must be an integer >= 1, got 0"),
    (10 ** 6, ValueError, r"`n` must be an integer from 1 to 150 \(the samples of 'iris'\)"),
    (2.5, TypeError, r"`n` must be an integer >= 1, got 2.5"),
])
def test_zoo_sizes_are_validated_not_clamped(n, err, message):
    from sa_clip import problems as zoo
    for build in (zoo.load_dataset, zoo.real_problem, zoo.logistic_regression):
        with pytest.raises(err, match=message):
            build("iris", n=n)
    if n != 10 ** 6:
        for build in (zoo.tanh_regression, zoo.logistic2d, zoo.quartic, zoo.linear1d):
            with pytest.raises(err, match=message):
                build(n=n)


def test_zoo_classes_come_from_the_full_data_set():
    from sa_clip import problems as zoo
    for n in (1, 2, 150):
        p = zoo.real_problem("iris", hidden=(3,), n=n)
        assert p.N == n and p.output_shape == (3,)
        assert zoo.logistic_regression("iris", n=n).output_shape == (3,)
    assert zoo.n_classes("digits") == 10


# ---------------------------------------------------------------- layers
def test_import_graph_has_no_cycle_and_the_data_layers_point_down():
    graph = helpers.import_graph()
    assert helpers.find_cycle(graph) is None, helpers.find_cycle(graph)
    allowed = {
        "sa_clip._version": set(), "sa_clip._validate": set(), "sa_clip._tqdm": set(),
        "sa_clip._cost": {"sa_clip._tqdm"},
        "sa_clip.layout": {"sa_clip._validate"},
        "sa_clip.sources": {"sa_clip._validate"},
        "sa_clip.problem": {"sa_clip._validate", "sa_clip.layout", "sa_clip.sources",
                            "sa_clip._cost", "sa_clip.recurrent"},
        "sa_clip.recurrent": set(),
        "sa_clip.streamed": {"sa_clip.problem", "sa_clip.sources"},
        "sa_clip.io": {"sa_clip._version"},
        "sa_clip.trajectory": {"sa_clip.io", "sa_clip._validate"},
        # the layers engine's package: its modules point down, the engine class last
        "sa_clip.layers._conv": set(),
        "sa_clip.layers._per_sample": {"sa_clip.layers._conv", "sa_clip.layout"},
        "sa_clip.layers._analysis": {"sa_clip.layers._per_sample", "sa_clip.layout",
                                     "sa_clip.problem"},
        "sa_clip.layers._engine": {"sa_clip.layers._analysis", "sa_clip.clipping",
                                   "sa_clip.engine", "sa_clip.layout", "sa_clip.problem"},
    }
    for mod, ok in allowed.items():
        assert graph[mod] <= ok, (mod, graph[mod] - ok)
    from sa_clip.problem import Block, Layout, group_norms  # re-exported for old imports
    assert Layout is sc.Layout and Block is sc.Block and callable(group_norms)
    assert helpers.find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]   # it can fail


def test_more_bad_arguments_found_by_a_hostile_sweep(tmp_path):
    from sa_clip import problems as zoo
    lin = nn.Linear(2, 1)
    X, y = torch.randn(5, 2), torch.randn(5)
    with pytest.raises(ValueError, match=r"`y` must hold one class label per sample .* got "
                                         r"shape \(N, 2\)"):   # was silently mis-gathered
        sc.Problem(nn.Linear(2, 2), X, torch.zeros(5, 2, dtype=torch.long), "cross_entropy")
    with pytest.raises(TypeError, match="`name` must be a string or None, got 5"):
        sc.Problem(lin, X, y, name=5)
    p = sc.Problem(lin, X, y)
    with pytest.raises(TypeError, match="`s` must be a slice of sample indices, got 3"):
        p.data(3)
    np.save(tmp_path / "x.npy", X.numpy())
    np.save(tmp_path / "y.npy", y.numpy())
    q = sc.Problem.from_npy(lin, tmp_path / "x.npy", tmp_path / "y.npy")
    with pytest.raises(TypeError, match=r"`index` must be an integer tensor .* torch.float32"):
        q.take(torch.tensor([0.5]))                          # was silently index 0
    with pytest.raises(TypeError, match=r"`path` must be a file path .* got 5"):
        sc.Trajectory.load(5)
    for hidden in ((0,), (-3,), "abc", (2.5,)):
        with pytest.raises(ValueError, match=r"`hidden` must be a sequence of layer widths"):
            zoo.real_problem("iris", hidden=hidden)
    with pytest.raises(TypeError, match=r"`seed` must be an integer >= 0, got 'x'"):
        zoo.tanh_regression(seed="x")
    with pytest.raises(ValueError, match=r"`seed` must be an integer in \[0, 2\^63\)"):
        zoo.logistic2d(seed=2 ** 64)
    with pytest.raises(TypeError, match=r"`dtype` must be a floating torch.dtype"):
        zoo.tanh_regression(dtype="float32")
    with pytest.raises(TypeError, match=r"`dtype` must be a floating torch.dtype"):
        zoo.real_problem("iris", dtype=torch.int64)


def test_location_problem_of_no_data_names_data():
    # the attack: the error blamed `X`, an argument the user never passed
    with pytest.raises(ValueError, match="`data` must hold at least one number"):
        sc.problems.location_problem([])
