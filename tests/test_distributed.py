"""MeanField sharded over torch.distributed: 2 gloo processes on loopback vs one process."""

import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import PROCESS_DEADLINE, rel_err

import sa_clip as sc
from problems import mlp_problem, shared_problem

WORLD = 2
RULES = [sc.NormClip(0.3), sc.LayerwiseAdaptiveClip(0.1), sc.UnitwiseAGC(0.2, eps=1e-3)]


def _thetas(p, k=3):
    # not p.theta0: mlp_problem's nn.Linear init draws from each process's global RNG
    gen = torch.Generator().manual_seed(5)
    return 0.5 * torch.randn(k, p.P, generator=gen, dtype=p.dtype)


def _streamed_mlp():
    ref = mlp_problem(n=11, loss="cross_entropy")
    src = sc.ArrayData(ref.X.numpy(), ref.y.numpy())
    return sc.Problem(ref.model, data=src, loss="cross_entropy")


def _compute(distributed):
    """Every quantity the test compares, sharded or not; also the rows each H call read."""
    out = {}
    p = shared_problem("mse", n=13)              # 13 = 6 + 7: an uneven split
    rows = []
    data = p.data

    def counting(s):
        x, y = data(s)
        rows.append(x.shape[0])
        return x, y

    p.data = counting
    for rule in RULES:
        f = sc.MeanField(p, rule, chunk_size=4, distributed=distributed)
        rows.clear()
        out[f"H/{rule.name}"] = f(p.theta0)
        out[f"rows/{rule.name}"] = sum(rows)
        out[f"Hb/{rule.name}"] = f(_thetas(p))
    f = sc.MeanField(p, sc.NormClip(0.3), chunk_size=4, distributed=distributed)
    st = f.clip_stats(_thetas(p))
    out["factors"], out["fraction"] = st.factors, st.fraction
    out["jac"] = f.jacobian(p.theta0)
    pc = mlp_problem(n=11, loss="cross_entropy")
    out["H/ce"] = sc.MeanField(pc, sc.AdaptiveClip(0.05, eps=0.5),
                               distributed=distributed)(_thetas(pc))
    ps = _streamed_mlp()
    out["H/streamed"] = sc.MeanField(ps, sc.AdaptiveClip(0.05, eps=0.5), chunk_size=2,
                                     distributed=distributed)(_thetas(ps))
    p1 = mlp_problem(n=1)                        # N < world: rank 0 owns no sample
    f1 = sc.MeanField(p1, sc.LayerwiseAdaptiveClip(0.1), distributed=distributed)
    out["H/n1"] = f1(_thetas(p1, 1)[0])
    out["factors/n1"] = f1.clip_stats(_thetas(p1, 1)[0]).factors
    return out


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        out = _compute(distributed=True)
        out["is_main"] = sc.distributed.is_main_process()
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _run_ranks(tmp_path, timeout=PROCESS_DEADLINE):
    # fresh processes, as under torchrun: a forkserver (a new interpreter, never this one) that
    # imports torch, sa_clip and this module once, then forks the ranks from that clean state
    # (spawn would import them once per rank). ``join`` waits on the ranks' exits; the
    # deadline is only a hang guard (minutes: a loaded machine takes long to import torch)
    mp.get_context("forkserver").set_forkserver_preload([__name__])
    ctx = mp.start_processes(_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)),
                             nprocs=WORLD, join=False, start_method="forkserver")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail(f"distributed workers did not finish within {timeout} s")
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.slow
def test_sharded_field_equals_single_process(tmp_path):
    ranks = _run_ranks(tmp_path)
    ref = _compute(distributed=False)
    for key, want in ref.items():
        if key.startswith("rows/"):
            # each rank read only its shard, 6 and 7 of the 13 samples
            assert [r[key] for r in ranks] == [6, 7], key
            assert want == 13
            continue
        for r in ranks:
            got = r[key]
            assert got.shape == want.shape, key
            assert rel_err(got, want) < 1e-12, (key, rel_err(got, want))
        # collectives hand every rank the same bits (adaptive ODE steps stay in lockstep)
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    assert [r["is_main"] for r in ranks] == [True, False]


def test_shard_covers_range_in_order_with_uneven_sizes():
    for n in (0, 1, 5, 13, 100):
        for world in (1, 2, 3, 7):
            parts = [sc.distributed.shard(n, r, world) for r in range(world)]
            assert parts[0].start == 0 and parts[-1].stop == n
            assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
            sizes = [s.stop - s.start for s in parts]
            assert max(sizes) - min(sizes) <= 1


def test_distributed_needs_a_process_group():
    p = mlp_problem()
    assert not dist.is_initialized()
    with pytest.raises(ValueError, match="`distributed=True` needs an initialised"):
        sc.MeanField(p, "none", distributed=True)
    with pytest.raises(ValueError, match="`group` is only used with distributed=True"):
        sc.MeanField(p, "none", group=object())
    with pytest.raises(TypeError, match="`distributed` must be True or False"):
        sc.MeanField(p, "none", distributed=1)


def test_init_from_env_is_a_no_op_outside_torchrun(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert sc.distributed.init_from_env() is False
    assert not dist.is_initialized()
    assert sc.distributed.is_main_process()
    assert sc.distributed.rank_and_world() == (0, 1)
    with pytest.raises(ValueError, match="`backend` must be one of"):
        sc.distributed.init_from_env("mpi")


def test_init_from_env_under_torchrun_variables(monkeypatch, tmp_path):
    # a one-process "torchrun": the env:// rendezvous on loopback, then torn down
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port)}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    try:
        assert sc.distributed.init_from_env("gloo") is True
        assert dist.get_backend() == "gloo"
        p = mlp_problem()
        H = sc.MeanField(p, sc.NormClip(0.3), distributed=True)(p.theta0)
        assert rel_err(H, sc.MeanField(p, sc.NormClip(0.3))(p.theta0)) < 1e-14
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()

