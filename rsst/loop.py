"""The iterative pruning state machine of SPEC §2: states, rewinding, masks, checkpoints, resume.

A run directory holds everything needed to understand and resume a run:
``config.toml``, ``metrics.jsonl`` (one line per epoch and per state), ``state_XX/`` (the pruned
network each state delivers, with its masks, and ``state.json``), ``summary.json`` and
``checkpoint.safetensors`` (model, momentum, masks, rewind point and position; rewritten
atomically after every epoch). ``rsst run --resume DIR`` continues from the last finished epoch
and reaches the same result as an uninterrupted run: every source of randomness is a pure
function of (seed, state, epoch).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import shutil
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from rsst import __version__, rundir
from rsst.arena import Arena
from rsst.compact import compact_cost
from rsst.config import RunConfig, load_config, save_config
from rsst.criteria import group_scores
from rsst.data import Batches, load_dataset
from rsst.engine import Engine, lr_schedule
from rsst.errors import UserError
from rsst.log import block_table, state_table, training_progress
from rsst.loggers import Loggers, check_loggers
from rsst.methods import PruneContext, get_method
from rsst.models import create_model, use_channels_last
from rsst.pruning import prune_lowest, refill
from rsst.rundir import CHECKPOINT, RunLock
from rsst.structure import build_structure
from rsst.update import UpdateConfig, make_backend, resolve_backend

__all__ = ["CHECKPOINT", "PruningRun", "default_run_dir", "resolve_device", "run"]


def default_run_dir(config: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    arch = config.arch.replace(":", "-").replace("/", "-")
    return Path("runs") / f"{config.method}-{arch}-{config.dataset}-{stamp}"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is visible; "
                        "use --device cpu or auto")
    return torch.device(name)


class PruningRun:
    """One run of SPEC §2 in one run directory."""

    def __init__(self, config: RunConfig, run_dir: Path, console: Console) -> None:
        self.config = config
        self.run_dir = run_dir
        self.console = console
        self.method = get_method(config.method)
        self.device = resolve_device(config.device)
        self.backend_name = resolve_backend(config.backend, self.device)
        torch.manual_seed(config.seed)

        self.data = load_dataset(config.dataset, config.data_dir, val_split=config.val_split,
                                 train_subset=config.train_subset, seed=config.seed,
                                 cache_dir=config.cache_dir)
        img_size = config.img_size or self.data.input_size[1]
        if img_size != self.data.input_size[1]:
            raise UserError(f"--img-size {img_size} does not match the dataset's "
                            f"{self.data.input_size[1]}-pixel images; drop --img-size")
        self.model = create_model(config.arch, num_classes=self.data.num_classes,
                                  img_size=img_size, patch_size=config.patch_size,
                                  mean=self.data.mean, std=self.data.std).to(self.device)
        self.arena = Arena(self.model,
                           channels_last=use_channels_last(config.memory_format, self.model))
        self.structure = build_structure(self.model, self.arena, config.structure)
        if self.structure.note:
            console.print(f"[yellow]note:[/] {self.structure.note}")
        self.update_config = UpdateConfig(
            momentum=config.momentum, weight_decay=config.weight_decay,
            nesterov=config.nesterov, optimizer=config.optimizer, beta1=config.beta1,
            beta2=config.beta2, eps=config.eps, **self.method.update_terms(config),
        )
        self.backend = make_backend(self.backend_name, self.device, self.update_config)
        self.engine = Engine(self.model, self.arena, self.backend, self.device, amp=config.amp,
                             label_smoothing=config.label_smoothing, compile=config.compile,
                             cuda_graph=config.cuda_graph)
        if config.cuda_graph and self.engine.capture is None:
            console.print("[yellow]note:[/] --cuda-graph needs the triton backend on CUDA and no "
                          f"--compile (this run: {self.backend_name} on {self.device}"
                          f"{', compiled' if config.compile else ''}); training without a graph")
        self.train_batches = Batches(self.data.train, config.batch_size, shuffle=True,
                                     augment=True, device=self.device, seed=config.seed)
        self.calibration = Batches(self.data.train, config.batch_size, shuffle=True,
                                   device=self.device, seed=config.seed + 1)
        self.val_batches = (Batches(self.data.val, config.eval_batch_size, device=self.device)
                            if len(self.data.val) else None)
        self.test_batches = (Batches(self.data.test, config.eval_batch_size, device=self.device)
                             if self.data.test is not None and len(self.data.test) else None)
        self.rewind_point: dict[str, torch.Tensor] | None = None
        self.records: list[dict[str, Any]] = []
        self.loggers: Any = None  # rsst.loggers.Loggers (--logger), set by run()

    # -- checkpoints -------------------------------------------------------------------------
    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def save_checkpoint(self, position: dict[str, Any]) -> None:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if self.rewind_point is not None:
            tensors.update({f"rewind.{k}": v for k, v in self.rewind_point.items()})
        arena_state = self.arena.state_dict()  # canonical order: resumable in either layout
        tensors.update({f"arena.{k}": v for k, v in arena_state.items()})
        meta = {"position": json.dumps(position), "records": json.dumps(self.records),
                "rsst.version": __version__}
        rundir.save_checkpoint(self.run_dir, tensors, meta)

    def load_checkpoint(self) -> dict[str, Any]:
        saved = rundir.load_checkpoint(self.run_dir, self.device)
        if saved is None:
            return {"state": 0, "epoch": 0}
        tensors, meta = saved
        try:
            position = json.loads(meta["position"])
            records = json.loads(meta["records"])
            model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
            self.model.load_state_dict(model_state)
            self.arena.load_state_dict({k[6:]: v for k, v in tensors.items()
                                        if k.startswith("arena.")})
        except (KeyError, ValueError, RuntimeError) as exc:
            raise rundir.checkpoint_error(self.run_dir, exc) from None
        rewind = {k[7:]: v for k, v in tensors.items() if k.startswith("rewind.")}
        self.rewind_point = rewind or None
        self.records = records
        self.arena.fresh_momentum = bool(position.get("fresh_momentum", position["epoch"] == 0))
        return position

    # -- one state ---------------------------------------------------------------------------
    def _evaluate(self) -> tuple[float | None, float | None, float | None]:
        val_acc = val_loss = test_acc = None
        if self.val_batches is not None:
            val_acc, val_loss = self.engine.evaluate(self.val_batches)
        if self.test_batches is not None:
            test_acc, _ = self.engine.evaluate(self.test_batches)
        return val_acc, val_loss, test_acc

    def train_state(self, state: int, start_epoch: int, partial: dict[str, Any]) -> dict[str, Any]:
        cfg = self.config
        steps = len(self.train_batches)
        ramp = steps * cfg.epochs if cfg.reg_ramp == "state" else steps
        self.backend.config = dataclasses.replace(self.update_config, ramp_steps=ramp)
        lr_at = lr_schedule(cfg.lr, cfg.lr_schedule, steps_per_epoch=steps, epochs=cfg.epochs,
                            warmup_epochs=cfg.warmup_epochs, milestones=cfg.milestones,
                            gamma=cfg.gamma)
        pending = self.arena.has_pending
        best = partial
        with training_progress(self.console) as progress:
            for epoch in range(start_epoch, cfg.epochs):
                t0 = time.perf_counter()
                task = progress.add_task("", total=steps, loss=0.0, acc=0.0, lam=0.0,
                                         label=f"state {state} · epoch {epoch + 1}/{cfg.epochs}")

                def on_progress(done: int, loss: float, acc: float, lam: float,
                                task: int = task) -> None:
                    progress.update(task, completed=done, loss=loss, acc=acc,
                                    lam=lam if pending else 0.0)

                base = epoch * steps
                result = self.engine.train_epoch(
                    self.train_batches.iter_epoch(state * cfg.epochs + epoch),
                    lambda i, base=base: lr_at(base + i),
                    (lambda i, base=base: base + i) if cfg.reg_ramp == "state" else (lambda i: i),
                    on_progress,
                )
                progress.remove_task(task)
                if self.engine.graph_note:
                    self.console.print(f"[yellow]note:[/] {self.engine.graph_note}")
                    self.engine.graph_note = None
                lam = result.lam if pending else 0.0
                if not math.isfinite(result.loss):
                    raise UserError(
                        f"training diverged in state {state}, epoch {epoch + 1} (loss "
                        f"{result.loss}) with λ = {lam:.4g}: lower --reg-granularity or --lr; "
                        f"the finished states in {self.run_dir} are intact")
                val_acc, val_loss, test_acc = self._evaluate()
                seconds = time.perf_counter() - t0
                record = {"kind": "epoch", "state": state, "epoch": epoch + 1,
                          "train_loss": result.loss, "train_acc": result.acc, "val_acc": val_acc,
                          "val_loss": val_loss, "test_acc": test_acc,
                          "lr": lr_at(base + steps - 1), "reg_lambda": lam, "seconds": seconds}
                # with no val split the last epoch stands in for the best one
                if (val_acc is None or "best_val_acc" not in best
                        or val_acc > best["best_val_acc"]):
                    best = {**best, "best_val_acc": val_acc, "best_epoch": epoch + 1,
                            "test_acc": test_acc}
                best = {**best, "last": record,
                        "seconds": best.get("seconds", 0.0) + seconds}
                if state == 0 and cfg.rewind_epoch() == epoch + 1:
                    self.rewind_point = self._snapshot()
                # the line first: a kill between the two leaves a line that resume trims,
                # never a checkpointed epoch without its line
                rundir.append_metrics(self.run_dir, record)
                if self.loggers is not None:  # --logger: mirrors the metrics.jsonl line
                    self.loggers.log_epoch(record)
                self.save_checkpoint({"state": state, "epoch": epoch + 1, "partial": best,
                                      "fresh_momentum": False})
        return best

    def finish_state(self, state: int, best: dict[str, Any]) -> dict[str, Any]:
        """State record, the RSST cut, the state's files, and the masks for the next state."""
        cfg = self.config
        t0 = time.perf_counter()
        last = best["last"]
        hard = self.arena.hard_mask
        record: dict[str, Any] = {
            "kind": "state", "state": state, "epoch": cfg.epochs,
            "train_loss": last["train_loss"], "train_acc": last["train_acc"],
            "val_acc": last["val_acc"], "best_val_acc": best.get("best_val_acc"),
            "best_epoch": best.get("best_epoch"), "test_acc": best.get("test_acc"),
            "last_test_acc": last["test_acc"],
            "remain_weight": self.structure.remain_weight(hard),
            "structured_sparsity": self.structure.sparsity(hard),
            "reg_lambda": last["reg_lambda"], "backend": self.backend_name,
            "device": str(self.device), "method": cfg.method,
            "memory_format": "channels_last" if self.arena.channels_last else "contiguous",
            "cuda_graph": self.engine.capture is not None,
        }
        if self.method.cuts_pending(cfg) and self.arena.has_pending:
            pending = self.arena.pending
            # how far λ faded the pending weights before they are cut
            record["pending_weight_rms"] = float(
                self.arena.weight[pending].pow(2).mean().sqrt())
            self.arena.set_masks(hard & ~pending)
            val_acc, _, test_acc = self._evaluate()
            cut = self.arena.hard_mask
            record.update({"val_acc_after_cut": val_acc, "test_acc_after_cut": test_acc,
                           "remain_weight_after_cut": self.structure.remain_weight(cut),
                           "structured_sparsity_after_cut": self.structure.sparsity(cut)})
        # alive / total groups of every unit in the network this state delivers, and what
        # physically removing the dead ones would leave (SPEC §6)
        record["groups"] = self.structure.per_unit(self.arena.hard_mask)
        record.update(compact_cost(self.model, tuple(self.data.input_size)))
        self.save_state_files(state, record)
        if self.method.prunes_after_state(state, cfg):
            self.prune(state)
        record["seconds"] = best.get("seconds", 0.0) + time.perf_counter() - t0
        return record

    def prune(self, state: int) -> None:
        """The next masks (SPEC §2): the method's scores give U, refilled into R if the method
        refills; applied hard (H ← R) or soft (P ← H ∧ ¬R). ``state`` -1: at initialization."""
        method, hard = self.method, self.arena.hard_mask
        prunable = self.structure.prunable
        ctx = PruneContext(self.model, self.arena, self.structure, self.config,
                           lambda n: self._calibration_batches(state, n), state)
        count = method.removal_count(int((hard & prunable).sum()), int(prunable.sum()),
                                     self.config)
        unstructured = prune_lowest(method.score(ctx), hard, prunable, count)
        if method.refill and self.structure.units:
            scores = group_scores(self.config.criteria, self.model, self.structure, self.arena,
                                  unstructured, ctx.batches(self.config.criteria_batches))
            unstructured = refill(self.structure, unstructured, hard, scores,
                                  self.config.fillback_rate)
        if method.soft:  # the dropped elements fade during the next state
            self.arena.set_masks(hard, hard & ~unstructured)
        else:
            self.arena.set_masks(unstructured)

    def _calibration_batches(self, state: int, count: int) -> list[Any]:
        """The first ``count`` calibration batches of ``state``'s draw (-1 counts as 0)."""
        return list(itertools.islice(self.calibration.iter_epoch(max(state, 0)), count))

    def save_state_files(self, state: int, record: dict[str, Any]) -> None:
        tensors = dict(self.model.state_dict())
        for name in self.structure.prunable_names:
            tensors[f"{name}.mask"] = self.arena.view(name, "code") & 1
        meta = {
            "rsst.format_version": str(rundir.FORMAT_VERSION), "rsst.arch": self.config.arch,
            "rsst.num_classes": str(self.data.num_classes),
            "rsst.input_size": json.dumps(list(self.data.input_size)),
            "rsst.patch_size": json.dumps(self.config.patch_size),
            "rsst.mean": json.dumps(list(self.data.mean)),
            "rsst.std": json.dumps(list(self.data.std)),
            "rsst.method": self.config.method, "rsst.state": str(state),
            "rsst.sparsity": json.dumps({"remain_weight": self.structure.remain_weight(
                self.arena.hard_mask), **self.structure.sparsity(self.arena.hard_mask)}),
            "rsst.structure": json.dumps(self.structure.per_unit(self.arena.hard_mask)),
            "rsst.config": json.dumps(self.config.to_dict()),
        }
        rundir.write_state(self.run_dir, state, tensors, meta, record)

    # -- the whole run -----------------------------------------------------------------------
    def run(self, resume: bool) -> list[dict[str, Any]]:
        cfg = self.config
        position = self.load_checkpoint() if resume else {"state": 0, "epoch": 0}
        if resume:
            rundir.trim_metrics(self.run_dir, position["state"], position["epoch"])
        if not resume and cfg.rewind_epoch() == 0:
            self.rewind_point = self._snapshot()
        kinds = self.structure.kinds
        for state in range(position["state"], cfg.states):
            start_epoch = position["epoch"] if state == position["state"] else 0
            partial = position.get("partial", {}) if start_epoch else {}
            if start_epoch == 0:
                if state > 0 and self.rewind_point is not None:
                    self.model.load_state_dict(self.rewind_point)
                    self.arena.apply_hard_mask()
                if state == 0 and self.method.prunes_at_init(cfg):
                    self.prune(-1)
                    self.arena.apply_hard_mask()
                self.arena.reset_momentum()
            if start_epoch < cfg.epochs:
                partial = self.train_state(state, start_epoch, partial)
            record = self.finish_state(state, partial)
            self.records.append(record)
            rundir.append_metrics(self.run_dir, record)
            if self.loggers is not None:  # --logger: mirrors the metrics.jsonl line
                self.loggers.log_state(record)
            self.save_checkpoint({"state": state + 1, "epoch": 0, "fresh_momentum": True})
            self.write_summary()
            self.console.print(state_table(self.records, kinds))
            if {"head", "neuron"} & set(kinds):
                self.console.print(block_table(record))
        return self.records

    def write_summary(self) -> None:
        rundir.write_summary(self.run_dir, {
            "rsst_version": __version__, "run_dir": str(self.run_dir),
            "method": self.config.method, "arch": self.config.arch,
            "dataset": self.config.dataset, "backend": self.backend_name,
            "device": str(self.device), "structure_kinds": self.structure.kinds,
            "states": self.records,
        })


def run(config: RunConfig, *, out: Path | None = None, resume: Path | None = None,
        overwrite: bool = False, console: Console | None = None,
        loggers: Sequence[str] = (), logger_options: dict[str, Any] | None = None) -> Path:
    """Run (or resume) the pruning loop; returns the run directory.

    The run directory is locked (`rundir.RunLock`) before anything in it is changed and until
    the run ends, so a second run, an overwrite or a resume of a live run is refused.
    ``loggers``: names of `rsst.loggers` (tensorboard, wandb, csv), checked before anything else.
    """
    console = console or Console()
    check_loggers(loggers)  # a missing extra fails before any training
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / rundir.CONFIG).is_file():
            raise UserError(f"{run_dir} is not an rsst run directory (no config.toml); pass the "
                            "directory `rsst run` printed")
        config = load_config(run_dir / rundir.CONFIG)
        action = "--resume"
    else:
        run_dir = Path(out or config.out or default_run_dir(config))
        action = "--overwrite" if overwrite else "a second run in it"
        if overwrite and _in_use(run_dir) and not (run_dir / rundir.CONFIG).is_file():
            raise UserError(f"--overwrite refuses to delete {run_dir}: it is not an rsst run "
                            "directory (no config.toml); choose another --out")
    lock = RunLock(run_dir)
    try:
        if (run_dir / rundir.CONFIG).is_file() or (run_dir / rundir.LOCK).exists():
            lock.acquire(action)  # refused, naming the holder, while another run is live
        if resume is None and _in_use(run_dir) and not overwrite:
            raise _exists(run_dir)
        pruning = PruningRun(config, run_dir, console)  # data and model errors before any write
        if resume is None:
            _prepare_fresh(run_dir, lock, config, action, overwrite)
        console.print(f"run directory: [bold]{run_dir}[/]  ({config.method} · {config.arch} · "
                      f"{config.dataset} · backend {pruning.backend_name} on {pruning.device})")
        if loggers:  # --logger: after the run directory exists, before training
            pruning.loggers = Loggers(
                loggers, run_dir, config.to_dict(), config.epochs,
                lambda line: console.print(f"[yellow]warning:[/] {escape(line)}",
                                           highlight=False),
                **(logger_options or {}))
        try:
            pruning.run(resume=resume is not None)
        finally:
            if pruning.loggers is not None:
                pruning.loggers.close()
    finally:
        lock.release()
    console.print(f"done: {run_dir}")
    return run_dir


def _exists(run_dir: Path) -> UserError:
    return UserError(f"run directory {run_dir} already exists: pass --resume {run_dir} to "
                     "continue it, --overwrite to replace it, or another --out")


def _in_use(run_dir: Path) -> bool:
    """The directory exists and holds something besides a lock file."""
    return run_dir.is_dir() and any(p.name != rundir.LOCK for p in run_dir.iterdir())


def _prepare_fresh(run_dir: Path, lock: RunLock, config: RunConfig, action: str,
                   overwrite: bool) -> None:
    """Create or (``--overwrite``) empty the run directory under the lock; write config.toml."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if not lock.held:
        lock.acquire(action)
    if _in_use(run_dir):
        if not overwrite:  # another run filled it between our first look and our lock
            raise _exists(run_dir)
        if not (run_dir / rundir.CONFIG).is_file():
            raise UserError(f"--overwrite refuses to delete {run_dir}: it is not an rsst run "
                            "directory (no config.toml); choose another --out")
        for child in run_dir.iterdir():  # everything but the lock we hold
            if child.name == rundir.LOCK:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    save_config(dataclasses.replace(config, out=str(run_dir)), run_dir / rundir.CONFIG)
