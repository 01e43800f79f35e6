"""The layer engine (sa_clip.layers) and the unrolled recurrent cells (sa_clip.recurrent):
H, loss and clip statistics of every norm-based rule against a plain per-sample autograd loop
in float64 (1e-9), on convolutions of every kind, embeddings, norm layers, attention,
transformer layers, LSTM/GRU/RNN, tied and frozen weights; each way of forming a layer's norms
(per-sample gradients by im2col or by a grouped convolution, ghost norms); the reasons; the
refusal of a model no engine serves; and that no per-sample gradient of the whole model is
ever allocated."""

import warnings

import pytest
import torch
from helpers import rel_err
from torch import nn

import sa_clip as sc
import sa_clip.layers as L
from sa_clip.recurrent import UnrolledRNN

D = torch.float64
N = 9
RULES = [sc.NoClip(), sc.NormClip(0.3), sc.AdaptiveClip(0.1), sc.LayerwiseAdaptiveClip(0.1),
         sc.UnitwiseAGC(0.1)]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def loop_grads(p, th):
    """Per-sample gradients ``(N, P)`` by one autograd call per sample (the reference)."""
    gs = []
    for i in range(p.N):
        x, y = p.data(slice(i, i + 1))
        t = th.detach().requires_grad_(True)
        gs.append(torch.autograd.grad(p.sample_losses(t, x, y).sum(), t)[0])
    return torch.stack(gs)


class Attn(nn.Module):
    def __init__(self, batch_first=True):
        super().__init__()
        self.a = nn.MultiheadAttention(4, 2, batch_first=batch_first)
        self.h = nn.Linear(4, 3)
        self.bf = batch_first

    def forward(self, x):
        x = x if self.bf else x.transpose(0, 1)
        o = self.a(x, x, x)[0]
        o = o if self.bf else o.transpose(0, 1)
        return self.h(o.mean(1))


class Encoder(nn.Module):
    def __init__(self, batch_first=True):
        super().__init__()
        self.e = nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, batch_first=batch_first)
        self.h = nn.Linear(4, 3)
        self.bf = batch_first

    def forward(self, x):
        x = x if self.bf else x.transpose(0, 1)
        o = self.e(x)
        o = o if self.bf else o.transpose(0, 1)
        return self.h(o.mean(1))


class Recurrent(nn.Module):
    def __init__(self, cls, **kw):
        super().__init__()
        self.r = cls(4, 5, batch_first=True, **kw)
        self.h = nn.Linear(5 * (2 if kw.get("bidirectional") else 1), 3)

    def forward(self, x):
        return self.h(self.r(x)[0][:, -1])


class Tied(nn.Module):
    """An embedding table reused as the output layer (a language model's tied weights)."""

    def __init__(self):
        super().__init__()
        self.e = nn.Embedding(7, 4)
        self.mid = nn.Linear(4, 4)
        self.out = nn.Linear(4, 7, bias=False)
        self.out.weight = self.e.weight

    def forward(self, x):
        return self.out(torch.tanh(self.mid(self.e(x))).mean(1))


def _frozen():
    m = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(100, 3))
    m[0].weight.requires_grad_(False)
    return m


def _bn():
    m = nn.Sequential(nn.ConvTranspose2d(2, 4, 3, stride=2, padding=1, output_padding=1,
                                         groups=2), nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(),
                      nn.Linear(4 * 14 * 14, 3))
    m[1].running_mean.uniform_(-0.5, 0.5)
    m[1].running_var.uniform_(0.5, 2.0)
    return m


MODELS = {
    "conv2d_reflect_stride": lambda: (nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1, padding_mode="reflect"), nn.Tanh(),
        nn.Flatten(), nn.Linear(64, 3)), (2, 7, 7)),
    "conv2d_groups_dilation_same": lambda: (nn.Sequential(
        nn.Conv2d(2, 4, 3, dilation=2, groups=2, padding="same"), nn.GroupNorm(2, 4), nn.Tanh(),
        nn.Flatten(), nn.Linear(196, 3)), (2, 7, 7)),
    "conv1d_circular": lambda: (nn.Sequential(
        nn.Conv1d(2, 3, 3, stride=2, padding=1, padding_mode="circular"), nn.Tanh(),
        nn.Conv1d(3, 4, 2, dilation=2), nn.Flatten(), nn.Linear(12, 3)), (2, 9)),
    "conv3d": lambda: (nn.Sequential(
        nn.Conv3d(2, 3, 2, stride=(1, 2, 1), padding=1), nn.Tanh(), nn.Flatten(),
        nn.Linear(3 * 6 * 3 * 6, 3)), (2, 5, 4, 5)),
    "convT2d_batchnorm": lambda: (_bn(), (2, 7, 7)),
    "embedding_layernorm": lambda: (nn.Sequential(
        nn.Embedding(6, 3, padding_idx=0), nn.Flatten(), nn.LayerNorm(15), nn.Linear(15, 3)),
        "tokens6"),
    "linear_on_positions": lambda: (nn.Sequential(
        nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2), nn.Flatten(), nn.Linear(12, 3)), (6, 4)),
    "attention": lambda: (Attn(), (5, 4)),
    "attention_seq_first": lambda: (Attn(False), (5, 4)),
    "encoder_layer": lambda: (Encoder(), (5, 4)),
    "encoder_layer_seq_first": lambda: (Encoder(False), (5, 4)),
    "lstm": lambda: (Recurrent(nn.LSTM), (4, 4)),
    "gru_bidirectional": lambda: (Recurrent(nn.GRU, bidirectional=True), (4, 4)),
    "rnn_two_layers": lambda: (Recurrent(nn.RNN, num_layers=2), (4, 4)),
    "tied": lambda: (Tied(), "tokens7"),
    "frozen_conv_weight": lambda: (_frozen(), (2, 7, 7)),
}


def make(name, dtype=D, seed=0):
    torch.manual_seed(seed)
    model, shape = MODELS[name]()
    if isinstance(shape, str):
        k = int(shape[-1])
        X = torch.randint(0, k, (N, 5 if k == 6 else 4))
    else:
        X = torch.randn(N, *shape)
    y = torch.randint(0, 7 if name == "tied" else 3, (N,))
    return sc.Problem(model, X, y, loss="cross_entropy", dtype=dtype)


@pytest.mark.parametrize("way", [None, "ghost", "grouped"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_h_and_clip_stats_match_a_per_sample_loop(name, way, monkeypatch):
    if way is not None and not any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d,
                                                  nn.ConvTranspose2d, nn.Linear))
                                   for m in MODELS[name]()[0].modules()):
        pytest.skip("no Linear or convolution")
    monkeypatch.setattr(L, "FORCE", way)
    p = make(name)
    th = p.theta0 + 0.1 * torch.randn(p.P, dtype=D, generator=torch.Generator().manual_seed(1))
    G = loop_grads(p, th)
    for rule in RULES:
        f = sc.MeanField(p, rule, chunk_size=4)               # chunks 4 + 4 + 1
        assert f.method == "layers", f.reason
        ref = rule.clip(G, th[None], p.layout).mean(0)
        assert rel_err(f(th), ref) < 1e-9, rule
        if rule.granularity != "none":
            c = f.clip_stats(th).factors
            assert float((c - rule.group_factors(G, th[None], p.layout)).abs().max()) < 1e-9
            if rule.name == "norm":
                assert 0 < f.clip_stats(th).fraction <= 1


@pytest.mark.parametrize("name", ["lstm", "gru_bidirectional", "rnn_two_layers", "attention",
                                  "encoder_layer", "conv1d_circular"])
def test_loss_matches_a_loop_with_torchs_own_modules(name):
    """float64 loss against torch's fused LSTM/GRU/RNN (the user's module) per sample, and the
    float32 loss and H run (they raised before the cells were unrolled)."""
    torch.manual_seed(0)
    model, shape = MODELS[name]()
    X = torch.randn(N, *shape, dtype=D)
    y = torch.randint(0, 3, (N,))
    p = sc.Problem(model, X, y, loss="cross_entropy", dtype=D)
    ref = model.to(D).eval()
    with torch.no_grad():
        losses = [nn.functional.cross_entropy(ref(X[i:i + 1]), y[i:i + 1]) for i in range(N)]
    assert abs(float(p.loss(p.theta0)) - float(torch.stack(losses).mean())) < 1e-12
    p32 = p.to(dtype=torch.float32)
    assert abs(float(p32.loss(p32.theta0)) - float(p.loss(p.theta0))) < 1e-5
    h32 = sc.MeanField(p32, sc.NormClip(0.3))(p32.theta0)
    h64 = sc.MeanField(p, sc.NormClip(0.3))(p.theta0)
    assert rel_err(h32.double(), h64) < 1e-4


@pytest.mark.parametrize("cls,kw", [(nn.LSTM, {}), (nn.LSTM, {"proj_size": 2, "num_layers": 2}),
                                    (nn.GRU, {"bidirectional": True}),
                                    (nn.RNN, {"nonlinearity": "relu", "bias": False})])
def test_unrolled_cells_equal_torchs(cls, kw):
    torch.manual_seed(0)
    m = cls(3, 4, **kw).to(D)
    u = UnrolledRNN(m)
    assert [n for n, _ in u.named_parameters()] == [n for n, _ in m.named_parameters()]
    for x in (torch.randn(5, 2, 3, dtype=D), torch.randn(5, 3, dtype=D)):   # batched or not
        a, b = m(x), u(x)
        assert float((a[0] - b[0]).abs().max()) < 1e-12
        ha = torch.cat(a[1]) if cls is nn.LSTM and not kw else (a[1][0] if cls is nn.LSTM
                                                                else a[1])
        hb = torch.cat(b[1]) if cls is nn.LSTM and not kw else (b[1][0] if cls is nn.LSTM
                                                                else b[1])
        assert float((ha - hb).abs().max()) < 1e-12


def test_reasons_name_the_engines():
    f = sc.MeanField(make("attention"), sc.NormClip(0.3))
    assert f.reason.startswith("layers: the fast engine does not apply")
    assert "per-sample gradients of MultiheadAttention at 'a' alone" in f.reason
    assert "DH (jacobian)" in f.reason and "the vmap engine" in f.reason
    g = sc.MeanField(make("conv3d"), sc.ValueClip(0.1))
    assert g.method == "vmap" and "the layers engine does not apply (rule ValueClip" in g.reason
    r = sc.MeanField(make("conv3d"), sc.NoClip(), engine="layers").reason
    assert r.startswith("layers: requested (engine='layers')")


def test_jacobian_directions_and_several_thetas(monkeypatch):
    p = make("conv2d_groups_dilation_same")
    rule = sc.NormClip(0.3)
    f, v = sc.MeanField(p, rule), sc.MeanField(p, rule, engine="vmap")
    th = p.theta0 + 0.1 * torch.randn(3, p.P, dtype=D, generator=torch.Generator().manual_seed(2))
    assert rel_err(f.jacobian(th[0]), v.jacobian(th[0])) < 1e-10        # DH by vmap
    monkeypatch.setattr(L, "LOOP_ELEMENTS", 0)                          # K rows, one by one
    assert rel_err(f(th), v(th)) < 1e-10
    idx = torch.randint(0, N, (3, 4), generator=torch.Generator().manual_seed(3))
    assert rel_err(f.directions(th, idx), v.directions(th, idx)) < 1e-10
    u1, fr1 = f.directions_stats(th[:1], idx[:1])                       # one chain: layers
    u2, fr2 = v.directions_stats(th[:1], idx[:1])
    assert rel_err(u1, u2) < 1e-10 and torch.equal(fr1, fr2)


class Bad(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return x * self.w if bool(x.sum() > 0) else x * self.w      # data-dependent branch


def test_a_model_no_engine_serves_is_refused_when_the_field_is_built():
    model = nn.Sequential(nn.Linear(4, 4), Bad(), nn.Linear(4, 1))
    p = sc.Problem(model, torch.randn(6, 4, dtype=D), torch.randn(6, dtype=D))
    with pytest.raises(sc.ModelNotSupportedError, match=r"through module '1' \(Bad\)"):
        sc.MeanField(p, sc.NormClip(0.3))


def test_a_parameter_used_outside_its_module_leaves_the_engine():
    class Outside(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 1)

        def forward(self, x):
            return self.b(torch.tanh(self.a(x)) + x @ self.a.weight.T)   # a.weight read twice

    p = sc.Problem(Outside(), torch.randn(6, 3, dtype=D), torch.randn(6, dtype=D))
    f = sc.MeanField(p, sc.NormClip(0.3))
    assert f.method == "vmap" and "do not match a per-sample autograd loop" in f.reason
    G = loop_grads(p, p.theta0)
    assert rel_err(f(p.theta0), sc.NormClip(0.3).clip(G, None, p.layout).mean(0)) < 1e-12


@pytest.mark.parametrize("way", [None, "psg", "grouped"])
def test_no_per_sample_gradient_of_the_whole_model_is_allocated(way, monkeypatch):
    """Every allocation of one H on a LeNet-like CNN is far below one chunk's per-sample
    gradients (chunk x P numbers), whichever way the convolution's norms are formed (the
    largest is the im2col copy of the first layer's input); the vmap engine's is not (so the
    check can fail)."""
    monkeypatch.setattr(L, "FORCE", way)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
                          nn.Flatten(), nn.Linear(4 * 14 * 14, 256), nn.Tanh(),
                          nn.Linear(256, 10))
    p = sc.Problem(model, torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,)),
                   "cross_entropy", dtype=torch.float32)
    chunk = 128
    full = chunk * p.P * 4                                  # bytes of (chunk, P) gradients

    def largest(field):
        field(p.theta0)                                     # warm up (and tune)
        with torch.profiler.profile(profile_memory=True) as prof:
            field(p.theta0)
        return max(e.cpu_memory_usage for e in prof.events())

    assert largest(sc.MeanField(p, sc.NormClip(0.5), chunk_size=chunk)) < full / 5
    # the vmap engine holds (chunk, n) per-sample gradients per block: the Linear 784x256 is
    # 99% of P
    assert largest(sc.MeanField(p, sc.NormClip(0.5), engine="vmap", chunk_size=chunk)) > full / 2


def test_untimed_choice_is_bit_identical_between_fresh_problems(monkeypatch):
    """With ``TIMED = False`` no layer's way depends on a timing: two problems built afresh
    give the same bits (with timing they agree to round-off)."""
    def h():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.Tanh(), nn.Flatten(),
                              nn.Linear(36, 3))
        g = torch.Generator().manual_seed(1)
        p = sc.Problem(model, torch.randn(64, 1, 7, 7, generator=g),
                       torch.randint(0, 3, (64,), generator=g), "cross_entropy", dtype=D)
        return sc.MeanField(p, sc.NormClip(0.3))(p.theta0)

    timed = h()
    monkeypatch.setattr(L, "TIMED", False)
    a, b = h(), h()
    assert torch.equal(a, b) and rel_err(a, timed) < 1e-13
