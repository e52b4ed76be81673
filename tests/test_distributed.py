"""Data-parallel training (`rsst.distributed`): 2 CPU processes with gloo against 1 process.

The multi-process tests start their ranks with ``torch.multiprocessing`` (spawn), each rank
seeing the environment torchrun would give it (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*), so the
library takes exactly its torchrun path; `test_torchrun_cli_run` runs the real
``python -m torch.distributed.run ... -m rsst run`` once.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny_pruning_run, tiny_run
from rich.console import Console
from safetensors.torch import load_file
from torch import nn

from rsst import distributed
from rsst.arena import Arena
from rsst.config import RunConfig, tomllib  # tomli before Python 3.11
from rsst.data import Batches, ImageSet
from rsst.distributed import SINGLE, World
from rsst.engine import Engine
from rsst.errors import UserError, is_shown
from rsst.update import UpdateConfig, make_backend
from rsst_kernels.masks import ALIVE, PENDING

ROOT = Path(__file__).resolve().parent.parent


def _images(n: int, size: int = 8, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
                    torch.randint(0, 4, (n,), generator=g))


# -- one process: sharding and helpers ------------------------------------------------------------
@pytest.mark.parametrize("n", [64, 61, 57])  # full batches; a last batch of 13; one of 9
def test_rank_shards_of_every_batch_make_up_the_single_process_batch(n: int) -> None:
    data = _images(n)
    kw = dict(shuffle=True, augment=True, seed=5)
    one = list(Batches(data, 16, **kw).iter_epoch(3))
    ranks = [list(Batches(data, 16, rank=r, world_size=4, **kw).iter_epoch(3)) for r in range(4)]
    assert all(len(r) == len(one) for r in ranks)  # a last batch under 4 images would be skipped
    for b, (x, y) in enumerate(one):
        xs = torch.cat([ranks[r][b][0] for r in range(4)])
        ys = torch.cat([ranks[r][b][1] for r in range(4)])
        keep = y.shape[0] // 4 * 4  # a last batch is trimmed to a multiple of the ranks
        assert all(ranks[r][b][1].shape[0] == keep // 4 for r in range(4))
        assert torch.equal(xs, x[:keep]) and torch.equal(ys, y[:keep])


def test_a_last_batch_smaller_than_the_ranks_is_skipped() -> None:
    data = _images(35)  # batches of 16, 16, 3: three images cannot feed four ranks
    assert len(Batches(data, 16, world_size=4)) == 2
    assert len(Batches(data, 16)) == 3


def test_a_global_batch_must_split_evenly() -> None:
    with pytest.raises(UserError, match="--batch-size 10 .* multiple of 4"):
        Batches(_images(8), 10, world_size=4)


def test_shard_ranges_cover_the_set_once() -> None:
    for n, size in [(10, 3), (2, 4), (0, 2), (7, 1)]:
        parts = [distributed.shard_range(n, World(r, size)) for r in range(size)]
        assert list(itertools.chain.from_iterable(range(n)[p] for p in parts)) == list(range(n))


def test_single_world_is_a_no_op() -> None:
    assert not SINGLE.distributed and SINGLE.is_main
    g = torch.ones(3)
    SINGLE.average_grad(g)
    SINGLE.broadcast_(g)
    assert torch.equal(SINGLE.sum_(g), torch.ones(3))
    SINGLE.settle(None)
    with pytest.raises(UserError, match="boom"):
        SINGLE.settle(UserError("boom"))


def test_start_without_torchrun_is_single(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    assert distributed.start("cpu") == (SINGLE, None)


def test_only_rank_zero_prints_shared_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    own = UserError("mine")
    own.every_rank = True  # type: ignore[attr-defined]
    quiet = UserError("relay")
    quiet.quiet = True  # type: ignore[attr-defined]
    monkeypatch.setenv("RANK", "0")
    assert is_shown(UserError("x")) and is_shown(own) and not is_shown(quiet)
    monkeypatch.setenv("RANK", "1")
    assert not is_shown(UserError("x")) and is_shown(own) and not is_shown(quiet)


def test_sync_batchnorm_twin_shares_parameters_and_statistics() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    twin = distributed.sync_batchnorm_twin(model)
    assert isinstance(twin[1], nn.SyncBatchNorm) and type(model[1]) is nn.BatchNorm2d
    assert twin[0].weight is model[0].weight and twin[1].weight is model[1].weight
    x = torch.randn(5, 3, 6, 6)
    reference = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    reference.load_state_dict(model.state_dict())
    twin.train()
    reference.train()
    assert torch.allclose(twin(x), reference(x))  # one process: SyncBatchNorm is BatchNorm
    assert torch.allclose(model[1].running_mean, reference[1].running_mean)  # landed in model
    assert int(model[1].num_batches_tracked) == 1


def test_config_records_the_launch_and_reads_back_the_run(tmp_path: Path) -> None:
    from rsst.config import load_config, save_config

    config = RunConfig(sync_bn=True, dist_timeout=30.0)
    save_config(config, tmp_path / "config.toml", launch={"world_size": 4})
    assert tomllib.loads((tmp_path / "config.toml").read_text())["launch"] == {"world_size": 4}
    assert load_config(tmp_path / "config.toml") == config  # [launch] is a record, not a setting


@pytest.mark.slow
def test_sync_bn_on_cpu_is_refused_in_one_line() -> None:

    config = RunConfig(arch="vit_tiny", patch_size=4, train_subset=32, val_split=16,
                       batch_size=16, device="cpu", backend="torch", sync_bn=True)
    with pytest.raises(UserError, match="--sync-bn needs CUDA"):
        tiny_pruning_run(config, Path("unused"), Console(quiet=True), world=World(0, 2),
                   device=torch.device("cpu"))


# -- two processes --------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join_world(rank: int, size: int, port: int) -> World:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    world, device = distributed.start("cpu", timeout_s=60)
    assert device == torch.device("cpu") and world.size == size
    return world


def _spawn(target, size: int, *args) -> list:  # type: ignore[no-untyped-def]
    """Start ``target(rank, size, port, *args)`` in ``size`` fresh processes."""
    ctx = torch.multiprocessing.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=target, args=(r, size, port, *args)) for r in range(size)]
    for p in procs:
        p.start()
    return procs


def _join(procs: list) -> None:  # type: ignore[type-arg]
    """Wait for the ranks; fail unless every one exited cleanly."""
    size = len(procs)
    for p in procs:
        p.join(timeout=240)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert codes == [0] * size, f"rank exit codes {codes}"


class _Tiny(nn.Module):
    """Conv + linear, no BatchNorm and no dropout: N ranks must match one process exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


STEPS, BATCH = 5, 16


def _train(world: World) -> dict[str, torch.Tensor]:
    """A few engine steps with momentum, weight decay and a pending set faded by λ."""
    torch.manual_seed(0)
    model = _Tiny()
    arena = Arena(model)
    code = torch.full_like(arena.code, ALIVE)
    code[::7] = 0
    code[1::5] |= PENDING
    arena.set_masks((code & ALIVE) != 0, (code & PENDING) != 0)
    config = UpdateConfig(momentum=0.9, weight_decay=5e-4, lam_max=1.0, ramp_steps=STEPS,
                          schedule="exp_custom_exponents")
    engine = Engine(model, arena, make_backend("torch", "cpu", config), torch.device("cpu"),
                    world=world)
    train = Batches(_images(STEPS * BATCH), BATCH, shuffle=True, augment=True, seed=1,
                    rank=world.rank, world_size=world.size)
    result = engine.train_epoch(train.iter_epoch(2), lambda i: 0.1, lambda i: i)
    val = _images(37, seed=9)
    part = distributed.shard_range(len(val), world)
    acc, loss = engine.evaluate(Batches(ImageSet(val.images[part], val.labels[part]), 8))
    return {"weight": arena.weight.clone(), "code": arena.code.clone(),
            "train": torch.tensor([result.loss, result.acc], dtype=torch.float64),
            "eval": torch.tensor([acc, loss], dtype=torch.float64)}


def _engine_rank(rank: int, size: int, port: int, out: str) -> None:
    world = _join_world(rank, size, port)
    try:
        torch.save(_train(world), Path(out) / f"rank{rank}.pt")
        world.sum_(torch.ones(1))  # both saved
        if rank == 1:
            os._exit(0)  # then rank 1 dies without a word, as a killed process does
        t0 = time.monotonic()
        try:
            world.average_grad(torch.ones(4))
            world.average_grad(torch.ones(4))
        except UserError as exc:
            assert is_shown(exc)
            (Path(out) / "error.txt").write_text(f"{time.monotonic() - t0:.1f}\n{exc}")
    finally:
        distributed.stop(world)


@pytest.mark.slow
def test_two_ranks_of_half_batches_train_like_one_process(tmp_path: Path) -> None:
    """... and a rank that dies ends the others with one line, long before the timeout."""
    procs = _spawn(_engine_rank, 2, str(tmp_path))
    one = _train(SINGLE)  # while the ranks start
    _join(procs)
    seconds, message = (tmp_path / "error.txt").read_text().split("\n", 1)
    assert float(seconds) < 30  # an error, not the 60 s timeout (and never a hang)
    assert "\n" not in message and message.startswith("rank 0: the gradient all-reduce failed")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert torch.equal(ranks[0]["weight"], ranks[1]["weight"])  # the ranks never drift apart
    moved = (one["weight"] - _Tiny_init_weight()).abs().max()
    assert moved > 1e-3  # the steps did something
    assert torch.allclose(ranks[0]["weight"], one["weight"], rtol=1e-5, atol=1e-6)
    assert torch.equal(ranks[0]["code"], one["code"])
    assert torch.allclose(ranks[0]["train"], one["train"], rtol=1e-5)  # global epoch metrics
    assert torch.allclose(ranks[0]["eval"], one["eval"], rtol=1e-5)  # sharded evaluation


def _sync_rank(rank: int, size: int, port: int, out: str) -> None:
    world = _join_world(rank, size, port)
    try:
        arena = Arena(nn.Linear(5, 3))
        arena.momentum.fill_(rank + 1.0)
        arena.ensure_second_moment().fill_(10.0 * (rank + 1))
        world.sync_arena(arena, nn.Linear(5, 3))
        torch.save({"m": arena.momentum.clone(), "v": arena.second_moment.clone()},
                   Path(out) / f"sync{rank}.pt")
    finally:
        distributed.stop(world)


@pytest.mark.slow
def test_sync_arena_gives_every_rank_rank_zeros_optimizer_state(tmp_path: Path) -> None:
    """SGD's momentum and AdamW's second moment alike (the first moment is the momentum)."""
    _join(_spawn(_sync_rank, 2, str(tmp_path)))
    for rank in range(2):
        state = torch.load(tmp_path / f"sync{rank}.pt")
        assert torch.all(state["m"] == 1.0) and torch.all(state["v"] == 10.0), rank


def _Tiny_init_weight() -> torch.Tensor:  # noqa: N802 - names the model it belongs to
    torch.manual_seed(0)
    model = _Tiny()
    return Arena(model).weight


def _loop_config(out: Path) -> RunConfig:
    return RunConfig(method="rsst", arch="vit_tiny", patch_size=4, states=2, epochs=1,
                     train_subset=64, val_split=32, batch_size=16, eval_batch_size=16,
                     device="cpu", backend="torch", seed=3, out=str(out))


def _loop_rank(rank: int, size: int, port: int, out: str) -> None:
    """`rsst.loop.run` as torchrun would start it; after the run, the ranks compare arenas."""
    import torch.distributed as dist

    import rsst.loop as loop

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    original = loop.PruningRun.run

    def run_and_compare(self, resume: bool):  # type: ignore[no-untyped-def]
        records = original(self, resume)
        same = []
        for buffer in (self.arena.code, self.arena.weight):
            gathered = [torch.empty_like(buffer) for _ in range(size)]
            dist.all_gather(gathered, buffer)
            same.append(all(torch.equal(g, gathered[0]) for g in gathered))
        (Path(out).parent / f"rank{rank}.json").write_text(json.dumps(same))
        return records

    loop.PruningRun.run = run_and_compare
    tiny_run(_loop_config(Path(out)), console=Console(quiet=True))


def _masks(run_dir: Path, state: int) -> dict[str, torch.Tensor]:
    tensors = load_file(str(run_dir / f"state_{state:02d}" / "weights.safetensors"))
    return {k: v for k, v in tensors.items() if k.endswith(".mask")}


@pytest.mark.slow
def test_two_rank_run_gives_the_masks_of_one_process(tmp_path: Path) -> None:

    two, one = tmp_path / "two", tmp_path / "one"
    one.mkdir()
    procs = _spawn(_loop_rank, 2, str(two))
    tiny_pruning_run(_loop_config(one), one, Console(quiet=True)).run(resume=False)
    _join(procs)
    for rank in (0, 1):  # masks and weights bit-identical on every rank
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == [True, True]
    assert tomllib.loads((two / "config.toml").read_text())["launch"]["world_size"] == 2
    assert sorted(p.name for p in two.iterdir()) == sorted(
        [p.name for p in one.iterdir()] + [".lock", "config.toml", "provenance.json"])  # rank 0
    for state in (0, 1):
        a, b = _masks(one, state), _masks(two, state)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not bool(m.all()) for m in _masks(two, 1).values())  # something was pruned
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert s2["world_size"] == 2 and s1["world_size"] == 1
    for r1, r2 in zip(s1["states"], s2["states"], strict=True):
        assert r1["remain_weight"] == r2["remain_weight"]
        assert r1["structured_sparsity"] == r2["structured_sparsity"]
        for key in ("val_acc", "train_loss", "val_acc_before_cut"):
            if r1.get(key) is not None:
                assert abs(r1[key] - r2[key]) <= 0.05 * max(1.0, abs(r1[key])), key


@pytest.mark.slow
def test_torchrun_cli_stops_every_rank_with_one_line(tmp_path: Path) -> None:
    """The real entry point (torchrun, 2 ranks, gloo): a mistake found on every rank is printed
    once, by rank 0, and every rank stops."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={_free_port()}", "-m", "rsst", "run", "--arch", "resnet20",
           "--sync-bn", "--device", "cpu", "--out", str(tmp_path / "run")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: --sync-bn needs CUDA (torch's SyncBatchNorm synchronizes GPU "
                      "tensors only): drop --sync-bn on the CPU"]
    assert not (tmp_path / "run" / "config.toml").exists()


@pytest.mark.slow
def test_bench_scaling_rank_counts_and_a_measured_step(tmp_path: Path) -> None:
    """The train suite's scaling rows: which rank counts, and one real 2-rank gloo timing
    through torchrun (on CUDA with several GPUs the same code runs with NCCL)."""
    from rsst_bench import scaling

    assert scaling.rank_counts(1) == [1]
    assert scaling.rank_counts(6) == [1, 2, 4, 6] and scaling.rank_counts(8) == [1, 2, 4, 8]
    (row,) = scaling.records("resnet20", torch.device("cpu"))
    assert row["status"] == "unmeasured" and row["images_per_s"] is None
    assert scaling.measure("resnet20", "cpu", 2, batch=2, steps=1, chunks=1, warmup=0) > 0
