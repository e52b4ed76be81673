"""The iterative pruning state machine of SPEC §2: states, rewinding, masks, checkpoints, resume.

A run directory holds everything needed to understand and resume a run:
``config.toml``, ``metrics.jsonl`` (one line per epoch and per state), ``state_XX/`` (the pruned
network each state delivers, with its masks, and ``state.json``), ``summary.json`` and
``checkpoint.safetensors`` (model, momentum, masks, rewind point and position; written before
the first epoch and rewritten atomically after every epoch). ``rsst run --resume DIR`` continues
from the last finished epoch and reaches the same result as an uninterrupted run: every source of
randomness is a pure function of (seed, state, epoch), and each write is ordered so that a kill
between any two leaves files the resume trims or rewrites identically (see `PruningRun.run`).

Under ``torchrun`` (`rsst.distributed`) every rank runs this loop on its share of each batch;
rank 0 alone takes the lock, writes the run directory and prints, and every pruning decision is
broadcast from rank 0.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from rsst import __version__, distributed, provenance, rundir, statefile
from rsst.arena import Arena
from rsst.compact import compact_cost
from rsst.config import RunConfig, load_config, save_config
from rsst.console import (
    block_table,
    epoch_line,
    quiet_library_noise,
    state_line,
    state_table,
    training_progress,
)
from rsst.criteria import group_scores
from rsst.data import Batches, DataSplits, ImageSet, load_dataset
from rsst.distributed import SINGLE, World, resolve_device
from rsst.engine import Engine, lr_schedule
from rsst.errors import TrainingDiverged, UserError
from rsst.killpoint import armed as kill_point_armed
from rsst.killpoint import kill_point
from rsst.latency import compacted_latency
from rsst.methods import PruneContext, get_method
from rsst.models import create_model, load_pretrained, use_channels_last
from rsst.pruning import (
    FADE_THRESHOLD,
    fade_ratio,
    masked_cost,
    prune_lowest,
    prune_to_budget,
    refill,
)
from rsst.rundir import CHECKPOINT, RunLock
from rsst.schedules import fade_lambda, ramp_offset, ramp_steps
from rsst.statefile import ModelSpec
from rsst.structure import build_structure
from rsst.trackers import Loggers, check_loggers
from rsst.update import UpdateConfig, make_backend, resolve_backend

__all__ = ["CHECKPOINT", "PruningRun", "default_run_dir", "resolve_device", "run"]


def load_run_data(config: RunConfig) -> DataSplits:
    """The dataset ``config`` names, split and subset as it says."""
    return load_dataset(config.dataset, config.data_dir, val_split=config.val_split,
                        train_subset=config.train_subset, seed=config.seed,
                        cache_dir=config.cache_dir)


class PruningRun:
    """One run of the pruning loop in one run directory, on ``data`` (`load_run_data`)."""

    def __init__(self, config: RunConfig, run_dir: Path, console: Console, data: DataSplits, *,
                 world: World = SINGLE, device: torch.device | None = None) -> None:
        self.config = config
        self.run_dir = run_dir
        self.console = console
        self.world = world  # rank 0 of 1 unless under torchrun
        self.method = get_method(config.method)
        self.device = device or resolve_device(config.device)
        if config.sync_bn and world.distributed and self.device.type != "cuda":
            raise UserError("--sync-bn needs CUDA (torch's SyncBatchNorm synchronizes GPU "
                            "tensors only): drop --sync-bn on the CPU")
        self.backend_name = resolve_backend(config.backend, self.device)
        torch.manual_seed(config.seed)

        self.data = data
        img_size = config.img_size or self.data.input_size[1]
        if img_size != self.data.input_size[1]:
            raise UserError(f"--img-size {img_size} does not match the dataset's "
                            f"{self.data.input_size[1]}-pixel images; drop --img-size")
        self.model = create_model(config.arch, num_classes=self.data.num_classes,
                                  img_size=img_size, patch_size=config.patch_size,
                                  mean=self.data.mean, std=self.data.std).to(self.device)
        if config.pretrained is not None:
            load_pretrained(self.model, config.pretrained)
        self.arena = Arena(self.model,
                           channels_last=use_channels_last(config.memory_format, self.model))
        self.structure = build_structure(self.model, self.arena, config.structure,
                                         config.prune_scope, config.groups)
        if self.structure.note:
            console.print(f"[yellow]note:[/] {self.structure.note}")
        self.update_config = UpdateConfig(
            momentum=config.momentum, weight_decay=config.weight_decay,
            nesterov=config.nesterov, optimizer=config.optimizer, beta1=config.beta1,
            beta2=config.beta2, eps=config.eps, **self.method.update_terms(config),
        )
        self.backend = make_backend(self.backend_name, self.device, self.update_config)
        train_model = self.model
        if config.sync_bn and world.distributed:
            train_model = distributed.sync_batchnorm_twin(self.model)
        self.engine = Engine(train_model, self.arena, self.backend, self.device, amp=config.amp,
                             label_smoothing=config.label_smoothing, compile=config.compile,
                             cuda_graph=config.cuda_graph, world=world)
        if config.cuda_graph and world.distributed:
            console.print("[yellow]note:[/] --cuda-graph is not used with several processes; "
                          "training without a graph")
        elif config.cuda_graph and self.engine.capture is None:
            console.print("[yellow]note:[/] --cuda-graph needs the triton backend on CUDA and no "
                          f"--compile (this run: {self.backend_name} on {self.device}"
                          f"{', compiled' if config.compile else ''}); training without a graph")
        self.train_batches = Batches(self.data.train, config.batch_size, shuffle=True,
                                     augment=True, device=self.device, seed=config.seed,
                                     rank=world.rank, world_size=world.size)
        self.calibration = Batches(self.data.train, config.batch_size, shuffle=True,
                                   device=self.device, seed=config.seed + 1)
        self.val_batches = (Batches(self._part(self.data.val), config.eval_batch_size,
                                    device=self.device)
                            if len(self.data.val) else None)
        self.test_batches = (Batches(self._part(self.data.test), config.eval_batch_size,
                                     device=self.device)
                             if self.data.test is not None and len(self.data.test) else None)
        self.rewind_point: dict[str, torch.Tensor] | None = None
        self.records: list[dict[str, Any]] = []
        self.loggers: Any = None  # rsst.trackers.Loggers (--logger), set by run()

    def _part(self, images: ImageSet) -> ImageSet:
        """This rank's contiguous part of an evaluation set (all of it for one process)."""
        if not self.world.distributed:
            return images
        part = distributed.shard_range(len(images), self.world)
        return ImageSet(images.images[part], images.labels[part])

    # -- checkpoints -------------------------------------------------------------------------
    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def save_checkpoint(self, position: dict[str, Any]) -> None:
        if not self.world.is_main:
            return
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if self.rewind_point is not None:
            tensors.update({f"rewind.{k}": v for k, v in self.rewind_point.items()})
        arena_state = self.arena.state_dict()  # canonical order: resumable in either layout
        tensors.update({f"arena.{k}": v for k, v in arena_state.items()})
        tensors.update({f"method.{k}": v for k, v in self.method.state_tensors(self.arena).items()})
        meta = {"position": json.dumps(position), "records": json.dumps(self.records),
                "rsst.version": __version__}
        rundir.save_checkpoint(self.run_dir, tensors, meta)

    def start(self) -> dict[str, Any]:
        """Position (0, 0) and the first checkpoint, written before anything trains: initial
        weights and the ``--rewind init`` point, so every later moment has a checkpoint."""
        if self.config.rewind_epoch() == 0:
            self.rewind_point = self._snapshot()
        position = {"state": 0, "epoch": 0, "fresh_momentum": True}
        self.save_checkpoint(position)
        return position

    def load_checkpoint(self) -> dict[str, Any] | None:
        """Restore model, momentum, masks, rewind point and records; return the position.

        None for a run killed during its setup, before its first checkpoint: nothing else is
        in the directory then, and starting afresh is exact (the initial weights are a function
        of the seed). A checkpoint missing from a run that has trained is refused: its states
        cannot be continued exactly without it.
        """
        saved = rundir.load_checkpoint(self.run_dir, self.device)
        if saved is None:
            trained = [f"state_{s:02d}/" for s in statefile.finished_states(self.run_dir)]
            if rundir.has_metrics(self.run_dir):
                trained.append(rundir.METRICS)
            if trained:
                raise UserError(
                    f"{self.run_dir / CHECKPOINT} is missing but the run has trained "
                    f"({', '.join(trained)}): it cannot be continued exactly without it; start "
                    f"over with `rsst run --config {self.run_dir / rundir.CONFIG} --overwrite`")
            return None
        tensors, meta = saved
        try:
            position = json.loads(meta["position"])
            records = json.loads(meta["records"])
            model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
            self.model.load_state_dict(model_state)
            self.arena.load_state_dict({k[6:]: v for k, v in tensors.items()
                                        if k.startswith("arena.")})
            self.method.load_state_tensors(self.arena, {
                k[7:]: v for k, v in tensors.items() if k.startswith("method.")})
        except (KeyError, ValueError, RuntimeError) as exc:
            raise rundir.checkpoint_error(self.run_dir, exc) from None
        rewind = {k[7:]: v for k, v in tensors.items() if k.startswith("rewind.")}
        self.rewind_point = rewind or None
        self.records = records
        self.arena.fresh_momentum = bool(position.get("fresh_momentum", position["epoch"] == 0))
        return position

    # -- one state ---------------------------------------------------------------------------
    def _evaluate(self) -> tuple[float | None, float | None, float | None]:
        self.world.sync_buffers(self.model)  # rank 0's BatchNorm statistics on every rank
        val_acc = val_loss = test_acc = None
        if self.val_batches is not None:
            val_acc, val_loss = self.engine.evaluate(self.val_batches)
        if self.test_batches is not None:
            test_acc, _ = self.engine.evaluate(self.test_batches)
        return val_acc, val_loss, test_acc

    def _lr_at(self) -> Any:
        """The state's learning rate as a function of its step (0 … epochs·steps − 1)."""
        cfg, steps = self.config, len(self.train_batches)
        return lr_schedule(cfg.lr, cfg.lr_schedule, steps_per_epoch=steps, epochs=cfg.epochs,
                           warmup_epochs=cfg.warmup_epochs, milestones=cfg.milestones,
                           gamma=cfg.gamma)

    def train_state(self, state: int, start_epoch: int, partial: dict[str, Any]) -> dict[str, Any]:
        cfg = self.config
        steps = len(self.train_batches)
        ctx = self._context(state)
        self.backend.config = dataclasses.replace(
            self.update_config, ramp_steps=ramp_steps(cfg.reg_ramp, steps, cfg.epochs),
            **self.method.begin_state(ctx, start_epoch))
        lr_at = self._lr_at()
        pending = self.arena.has_pending
        best = partial
        with training_progress(self.console) as progress:
            for epoch in range(start_epoch, cfg.epochs):
                t0 = time.perf_counter()
                task = progress.add_task("", total=steps, loss=0.0, acc=0.0, lam=0.0,
                                         label=f"state {state} · epoch {epoch + 1}/{cfg.epochs}")

                def on_progress(done: int, loss: float, acc: float, lam: float,
                                task: int = task, epoch: int = epoch) -> None:
                    progress.update(task, completed=done, loss=loss, acc=acc,
                                    lam=lam if pending else 0.0)
                    if kill_point_armed():  # test seam: killed mid-epoch
                        kill_point(f"state{state}-epoch{epoch + 1}-step{done}")

                base = epoch * steps
                offset = ramp_offset(cfg.reg_ramp, epoch, steps)
                self._seed_global_rng(state, epoch)
                result = self.engine.train_epoch(
                    self.train_batches.iter_epoch(state * cfg.epochs + epoch),
                    lambda i, base=base: lr_at(base + i),
                    lambda i, offset=offset: offset + i,
                    on_progress,
                )
                progress.remove_task(task)
                if self.engine.graph_note:
                    self.console.print(f"[yellow]note:[/] {self.engine.graph_note}")
                    self.engine.graph_note = None
                extra = self.method.after_epoch(ctx, epoch + 1)
                best = self._end_epoch(state, epoch + 1, result, result.lam if pending else 0.0,
                                       lr_at(base + steps - 1), t0, best, extra=extra)
        return best

    def _end_epoch(self, state: int, epoch: int, result: Any, lam: float, lr: float, t0: float,
                   best: dict[str, Any], *, extra: dict[str, Any] | None = None,
                   fade: int | None = None) -> dict[str, Any]:
        """Everything after an epoch's training, for normal and fade epochs alike (``epoch``
        counts from 1; fade epoch ``fade`` is epoch ``epochs + fade``): evaluate, stop on a
        non-finite value, the epoch's record and the running best, then the ordered writes:
        metrics line (rank 0), console line, then checkpoint. Returns the new partial state."""
        cfg = self.config
        val_acc, val_loss, test_acc = self._evaluate()
        self._check_finite(state, epoch, result.loss, val_loss, lam, lr)
        seconds = time.perf_counter() - t0
        record = {"kind": "epoch", "state": state, "epoch": epoch,
                  "train_loss": result.loss, "train_acc": result.acc, "val_acc": val_acc,
                  "val_loss": val_loss, "test_acc": test_acc, "lr": lr, "reg_lambda": lam,
                  **(extra or {}), "seconds": seconds}
        if fade is not None:
            record["fade"] = True
            best = {**best, "fade_epochs": fade}
        else:
            # with no val split the last epoch stands in for the best one
            if val_acc is None or "best_val_acc" not in best or val_acc > best["best_val_acc"]:
                best = {**best, "best_val_acc": val_acc, "best_epoch": epoch,
                        "test_acc_at_best_val": test_acc}
            if state == 0 and cfg.rewind_epoch() == epoch:
                self.rewind_point = self._snapshot()
        best = {**best, "last": record, "seconds": best.get("seconds", 0.0) + seconds}
        # the line first: a kill between the two leaves a line that resume trims, never a
        # checkpointed epoch without its line
        self._write_line(record)
        self.console.print(epoch_line(record, cfg.epochs), highlight=False)
        kill_point(f"state{state}-epoch{epoch}-after-metrics")
        self.save_checkpoint({"state": state, "epoch": epoch, "partial": best,
                              "fresh_momentum": False})
        return best

    def _write_line(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl line (an epoch's or a state's), mirrored to the --logger trackers:
        written by rank 0 alone."""
        if not self.world.is_main:
            return
        rundir.append_metrics(self.run_dir, record)
        if self.loggers is not None:
            if record["kind"] == "epoch":
                self.loggers.log_epoch(record)
            else:
                self.loggers.log_state(record)

    def _seed_global_rng(self, state: int, epoch: int) -> None:
        """Seed torch's global RNG from (seed, state, epoch) alone (epoch -1: the pruning after
        the state), so whatever draws from it — dropout in a timm model, a random scorer — draws
        the same after a resume as in an uninterrupted run."""
        torch.manual_seed((self.config.seed * 1_000_003 + (state + 2) * 65_537 + epoch + 2)
                          % 2**63)

    def _weights_finite(self) -> bool:
        """Every weight and floating buffer (BatchNorm statistics) is finite (one host read)."""
        tensors = [self.arena.weight, *(b for b in self.model.buffers() if b.is_floating_point())]
        return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())

    def _check_finite(self, state: int, epoch: int, train_loss: float, val_loss: float | None,
                      lam: float, lr: float) -> None:
        """Stop (`TrainingDiverged`, exit 3) before a non-finite loss or weight reaches a metrics
        line, a checkpoint or a state file: the finished states and the last checkpoint stay."""
        bad = [name for name, value in (("training loss", train_loss), ("val loss", val_loss))
               if value is not None and not math.isfinite(value)]
        if not self._weights_finite():
            bad.append("weights")
        if bad:
            fix = "lower --reg-granularity or --lr" if lam > 0 else "lower --lr"
            raise TrainingDiverged(
                f"training diverged in state {state}, epoch {epoch} (non-finite "
                f"{', '.join(bad)}) at lr {lr:.4g} with λ = {lam:.4g}: {fix} and start over "
                f"with --overwrite; the finished states in {self.run_dir} are kept")

    # -- the fade of the pending set (RSST) ---------------------------------------------------
    def _fade_ratio(self) -> float | None:
        arena = self.arena
        return fade_ratio(arena.weight, arena.hard_mask, arena.pending, self.structure.prunable)

    def fade_pending(self, state: int, start_epoch: int, best: dict[str, Any]) -> dict[str, Any]:
        """``--fade-epochs N``: before the cut, train on until the pending weights have faded.

        While `fade_ratio` ≥ `FADE_THRESHOLD`, at most N times: fade epoch k (1…N, epoch
        ``epochs + k`` of the state) repeats the learning rates of the state's last epoch with λ
        held at 2^k·λ_max (GReg's growing penalty), capped at 1/lr; on a data order of its own; each
        is logged (``"fade": true``) and checkpointed like an epoch. ``start_epoch`` ≥ ``epochs``
        on a resume. Costs one epoch of training and one evaluation per fade epoch taken
        (λ: `rsst.schedules.fade_lambda`).
        """
        cfg = self.config
        if not (cfg.fade_epochs and self.method.cuts_pending(cfg) and self.arena.has_pending):
            return best
        steps = len(self.train_batches)
        lr_at = self._lr_at()
        base = (cfg.epochs - 1) * steps
        peak_lr = max(lr_at(base + i) for i in range(steps))
        for k in range(start_epoch - cfg.epochs + 1, cfg.fade_epochs + 1):
            before = self._fade_ratio()
            if before is None or before < FADE_THRESHOLD:
                break
            t0 = time.perf_counter()
            self.backend.config = dataclasses.replace(
                self.update_config, ramp_steps=1,
                lam_max=fade_lambda(cfg.reg_granularity, k, peak_lr))
            order = cfg.states * cfg.epochs + state * cfg.fade_epochs + k - 1  # past all epochs
            self._seed_global_rng(state, cfg.epochs + k - 1)
            result = self.engine.train_epoch(self.train_batches.iter_epoch(order),
                                             lambda i: lr_at(base + i), lambda i: 0)
            best = self._end_epoch(state, cfg.epochs + k, result, result.lam,
                                   lr_at(base + steps - 1), t0, best, fade=k)
            after = self._fade_ratio()
            self.console.print(f"state {state} · fade epoch {k}/{cfg.fade_epochs}: λ = "
                               f"{result.lam:.4g}, fade_ratio {before:.3g} → "
                               f"{'n/a' if after is None else f'{after:.3g}'}", highlight=False)
        return best

    def _warn_unfaded(self, state: int, ratio: float | None) -> None:
        """One warning line when the cut removes weights that have not faded, naming the fixes
        this run does not already use."""
        if ratio is None or ratio < FADE_THRESHOLD:
            return
        cfg = self.config
        if cfg.fade_epochs:
            fix = (f"still not faded after --fade-epochs {cfg.fade_epochs} extra epochs; raise "
                   "--fade-epochs or --reg-granularity")
        else:  # only the fixes not already in effect
            fixes = ["longer states (--epochs)", "a larger --reg-granularity"]
            if cfg.schedule != "x":
                fixes.append("--schedule x")
            fix = (f"use {', '.join(fixes)}, or --fade-epochs N to train on until they fade")
        self.console.print(
            f"[yellow]warning:[/] state {state}: the cut removes weights that have not faded "
            f"(fade_ratio {ratio:.3g} ≥ {FADE_THRESHOLD}: pending rms / live rms), so accuracy "
            f"drops at the cut; {fix}", highlight=False)

    def finish_state(self, state: int, best: dict[str, Any]) -> dict[str, Any]:
        """State record, the RSST cut, the state's files, and the masks for the next state.

        The record's ``val_acc`` and ``test_acc`` are the accuracies of the network the state
        saves in ``state_XX/weights.safetensors`` (after the RSST cut when there was one), so
        ``rsst eval state_XX/weights.safetensors --split test`` reproduces ``test_acc``. An
        RSST state also keeps the trained network's accuracies just before the cut
        (``val_acc_before_cut``, ``test_acc_before_cut``); ``best_val_acc``, ``best_epoch``
        and ``test_acc_at_best_val`` describe the state's best-validation epoch, whose weights
        are not saved. ``remain_weight`` / ``structured_sparsity`` are before the cut, their
        ``*_after_cut`` twins the saved network's.

        ``macs_ratio`` / ``params_ratio`` and (``--latency``) ``latency_ms``,
        ``dense_latency_ms``, ``latency_ratio`` describe the saved network compacted. With a
        budget, ``budget_met`` says whether it meets it (the run stops after the first state
        that does) and ``budget_prune`` (on the state whose prune was sized to the budget, in
        the metrics line and summary) what that prune aimed at and reached.
        """
        cfg = self.config
        t0 = time.perf_counter()
        last = best["last"]
        hard = self.arena.hard_mask
        record: dict[str, Any] = {
            "kind": "state", "state": state, "epoch": cfg.epochs,
            "train_loss": last["train_loss"], "train_acc": last["train_acc"],
            # the network state_XX/weights.safetensors holds (replaced after an RSST cut)
            "val_acc": last["val_acc"], "test_acc": last["test_acc"],
            "best_val_acc": best.get("best_val_acc"), "best_epoch": best.get("best_epoch"),
            "test_acc_at_best_val": best.get("test_acc_at_best_val", best.get("test_acc")),
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
            record["fade_ratio"] = self._fade_ratio()
            if cfg.fade_epochs:
                record["fade_epochs"] = best.get("fade_epochs", 0)
            self._warn_unfaded(state, record["fade_ratio"])
            self.arena.set_masks(hard & ~pending)
            val_acc, _, test_acc = self._evaluate()
            cut = self.arena.hard_mask
            record.update({"val_acc_before_cut": record["val_acc"],
                           "test_acc_before_cut": record["test_acc"],
                           "val_acc": val_acc, "test_acc": test_acc,
                           "remain_weight_after_cut": self.structure.remain_weight(cut),
                           "structured_sparsity_after_cut": self.structure.sparsity(cut)})
        # alive / total groups of every unit in the network this state delivers, and what
        # physically removing the dead ones would leave (SPEC §6)
        record["groups"] = self.structure.per_unit(self.arena.hard_mask)
        record.update(compact_cost(self.model, tuple(self.data.input_size)))
        if cfg.latency:
            record.update(self._latency())
        budget_stop = self._budget_stop(state, record)
        if not self._weights_finite():  # a resumed checkpoint or the cut went wrong: never save
            self._check_finite(state, cfg.epochs, last["train_loss"], None, last["reg_lambda"],
                               last["lr"])
        self.save_state_files(state, record)
        kill_point(f"state{state}-after-state-files")
        if not budget_stop and self.method.prunes_after_state(state, cfg):
            sized = self.prune(state)
            if sized is not None:  # the prune was sized to the budget: said in the next record
                record["budget_prune"] = sized
        record["seconds"] = best.get("seconds", 0.0) + time.perf_counter() - t0
        return record

    def prune(self, state: int) -> dict[str, Any] | None:
        """The next masks (SPEC §2): the method's scores give U, refilled into R if the method
        refills; applied hard (H ← R) or soft (P ← H ∧ ¬R). ``state`` -1: at initialization.

        With a budget, R is sized to it (`rsst.pruning.prune_to_budget`) when the method prunes
        to it at once or when the regular prune would reach it: the delivered network — after
        the RSST cut, R itself — lands at or just under the budget. Returns then what was
        aimed at and reached (``met`` False: the budget cannot be met, warned here); else None.
        """
        method, hard, cfg = self.method, self.arena.hard_mask, self.config
        prunable = self.structure.prunable
        self._seed_global_rng(state, -1)
        ctx = self._context(state)
        element_scores = method.score(ctx)
        budget = cfg.budget()
        at_once = budget is not None and method.prunes_to_budget_at_once(cfg)

        def scores_of(unstructured: torch.Tensor) -> dict[str, torch.Tensor]:
            return group_scores(cfg.criteria, self.model, self.structure, self.arena,
                                unstructured, ctx.batches(cfg.criteria_batches))

        sized = None
        if not at_once:
            count = method.removal_count(int((hard & prunable).sum()), int(prunable.sum()), cfg,
                                         state)
            unstructured = prune_lowest(element_scores, hard, prunable, count)
        kill_point(f"state{state}-pruning")
        if not at_once and method.refill and self.structure.units:
            unstructured = refill(self.structure, unstructured, hard, scores_of(unstructured),
                                  cfg.fillback_rate, cfg.refill_scope, cfg.round_to)
        if budget is not None:
            kind, target = budget

            def cost(mask: torch.Tensor) -> float:
                return masked_cost(self.model, self.arena.weight, mask,
                                   tuple(self.data.input_size), kind)

            if at_once or cost(unstructured) <= target:
                unstructured, reached = prune_to_budget(
                    self.structure, hard, element_scores, scores_of, cost, target,
                    fillback_rate=cfg.fillback_rate, scope=cfg.refill_scope,
                    round_to=cfg.round_to)
                sized = {"target": target, f"{kind}_ratio": reached, "met": reached <= target}
                if not sized["met"]:
                    self._warn_budget(f"cannot be met: pruning every unit down to its last "
                                      f"group leaves {kind}_ratio {reached:.4g}")
        if method.soft:  # the dropped elements fade during the next state
            self.arena.set_masks(hard, hard & ~unstructured)
        else:
            self.arena.set_masks(unstructured)
        self.world.sync_arena(self.arena, self.model)  # rank 0's decision, on every rank
        return sized

    # -- budgets and latency -----------------------------------------------------------------
    def _warn_budget(self, why: str) -> None:
        kind, target = self.config.budget() or ("", 0.0)
        self.console.print(f"[yellow]warning:[/] --target-{kind} {target:g} {why}; the run "
                           f"records budget_met false", highlight=False)

    def _budget_stop(self, state: int, record: dict[str, Any]) -> bool:
        """With a budget: record whether this state's delivered network meets it
        (``budget_met``) and whether the run stops after it — met, or the sized prune that made
        it could not meet it, or (warned) --states ran out first."""
        budget = self.config.budget()
        if budget is None:
            return False
        kind, target = budget
        record["budget_met"] = met = record[f"{kind}_ratio"] <= target
        previous = self.records[-1] if self.records else {}
        sized = previous.get("budget_prune") if state > 0 else None
        if met or (sized is not None and not sized["met"]):
            return True
        # a one-shot method's sized prune has said so already when it missed the budget
        if state + 1 >= self.config.states and not self.method.prunes_to_budget_at_once(
                self.config):
            self._warn_budget(f"is not met after --states {self.config.states} (the last state "
                              f"delivers {kind}_ratio {record[f'{kind}_ratio']:.4g}): raise "
                              "--states or --rate")
        return False

    def budget_summary(self) -> dict[str, Any] | None:
        """The summary's ``budget``: its kind and target, whether it was met and by which state
        (the run stops there), and the ratio that state delivers."""
        budget = self.config.budget()
        if budget is None or not self.records:
            return None
        kind, target = budget
        met = next((r for r in self.records if r.get("budget_met")), None)
        last = met or self.records[-1]
        return {"kind": kind, "target": target, "met": met is not None,
                "state": last["state"], f"{kind}_ratio": last[f"{kind}_ratio"]}

    def _stopped(self) -> bool:
        """The budget ended the run at its last finished state (a resume trains no more)."""
        if not self.records or self.config.budget() is None:
            return False
        last = self.records[-1]
        if last.get("budget_met"):
            return True
        before = self.records[-2] if len(self.records) > 1 else {}
        sized = before.get("budget_prune")
        return sized is not None and not sized["met"]

    def _latency(self) -> dict[str, float]:
        """`rsst.latency.compacted_latency` of the delivered network, the dense network timed
        beside it in alternating rounds (so load drift during a run does not enter the ratio)."""
        return compacted_latency(self.model, tuple(self.data.input_size), self.device,
                                 channels_last=self.arena.channels_last)

    def _context(self, state: int) -> PruneContext:
        return PruneContext(self.model, self.arena, self.structure, self.config,
                            lambda n: self._calibration_batches(state, n), state)

    def _calibration_batches(self, state: int, count: int) -> list[Any]:
        """The first ``count`` calibration batches of ``state``'s draw (-1 counts as 0)."""
        return list(itertools.islice(self.calibration.iter_epoch(max(state, 0)), count))

    def save_state_files(self, state: int, record: dict[str, Any]) -> None:
        if not self.world.is_main:
            return
        hard = self.arena.hard_mask
        masks = {name: self.arena.view(name, "code") & 1
                 for name in self.structure.prunable_names}
        meta = statefile.state_metadata(
            ModelSpec.of(self.model), method=self.config.method, state=state,
            sparsity={"remain_weight": self.structure.remain_weight(hard),
                      **self.structure.sparsity(hard)},
            structure=self.structure.per_unit(hard), config=self.config.to_dict())
        statefile.write_state(self.run_dir, state, self.model.state_dict(), masks, meta, record)

    # -- the whole run -----------------------------------------------------------------------
    def run(self, resume: bool) -> list[dict[str, Any]]:
        """Train the states from the checkpoint's position (``resume``) or from the start.

        Write order, per epoch: metrics line, then checkpoint; per state: state files, metrics
        line, checkpoint, summary. A kill between any two is undone by the resume: lines past
        the checkpoint's position are trimmed and written again, state files are rewritten with
        the same content, and the summary is rewritten from the checkpoint's records.
        """
        cfg = self.config
        position = self.load_checkpoint() if resume else None
        self.world.sync_arena(self.arena, self.model)  # every rank starts from rank 0's arena
        if position is None:
            position = self.start()
        if resume and self.world.is_main:
            rundir.trim_metrics(self.run_dir, position["state"], position["epoch"])
            if self.records:  # the summary may lag the checkpoint by one state
                self.write_summary()
        kinds = self.structure.kinds
        for state in range(position["state"], cfg.states):
            if self._stopped():  # the budget was met (a resume of a finished budget run)
                break
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
            partial = self.fade_pending(state, max(start_epoch, cfg.epochs), partial)
            record = self.finish_state(state, partial)
            self.records.append(record)
            self._write_line(record)
            kill_point(f"state{state}-after-metrics")
            self.save_checkpoint({"state": state + 1, "epoch": 0, "fresh_momentum": True})
            kill_point(f"state{state}-after-checkpoint")
            self.write_summary()
            self.console.print(state_line(record, kinds), highlight=False)
            if {"head", "neuron"} & set(kinds):
                self.console.print(block_table(record))
            if record.get("budget_met"):
                kind, target = cfg.budget() or ("", 0.0)
                self.console.print(f"budget met at state {state}: {kind}_ratio "
                                   f"{record[f'{kind}_ratio']:.4g} ≤ {target:g} "
                                   f"(--target-{kind}); the run stops here", highlight=False)
        if self.records:  # the whole table once, at the end
            self.console.print(state_table(self.records, kinds))
        return self.records

    def write_summary(self) -> None:
        if not self.world.is_main:
            return
        rundir.write_summary(self.run_dir, {
            "rsst_version": __version__, "run_dir": str(self.run_dir),
            "method": self.config.method, "arch": self.config.arch,
            "dataset": self.config.dataset, "backend": self.backend_name,
            "device": str(self.device), "world_size": self.world.size,
            "structure_kinds": self.structure.kinds,
            "val_images": len(self.data.val), "num_classes": self.data.num_classes,
            **({"budget": b} if (b := self.budget_summary()) is not None else {}),
            "states": self.records,
        })


def run(config: RunConfig, *, out: Path | None = None, resume: Path | None = None,
        overwrite: bool = False, console: Console | None = None,
        loggers: Sequence[str] = (), logger_options: dict[str, Any] | None = None,
        load_data: Callable[[RunConfig], DataSplits] | None = None) -> Path:
    """Run (or resume) the pruning loop; returns the run directory.

    The run directory is locked (`rundir.RunLock`) before anything in it is changed and until
    the run ends, so a second run, an overwrite or a resume of a live run is refused. Under
    torchrun (`rsst.distributed`) rank 0 takes the lock, writes and logs; every rank trains, and
    all stop together when one fails.
    ``loggers``: names of `rsst.trackers` (tensorboard, wandb, csv), checked before anything
    else.
    ``load_data``: the run's dataset from its config (default `load_run_data`; tests pass a
    shrunk one).
    """
    console = console or Console()
    quiet_library_noise()
    check_loggers(loggers, logger_options)  # a missing extra fails before any training
    if resume is not None:
        run_dir = Path(resume)
        rundir.check_resume_target(run_dir)
        config = load_config(run_dir / rundir.CONFIG)
        if (run_dir / CHECKPOINT).is_file():  # it holds the weights --pretrained gave at start
            config = dataclasses.replace(config, pretrained=None)
        action = "--resume"
    else:
        run_dir = Path(out or config.out or rundir.default_run_dir(
            config.method, config.arch, config.dataset))
        action = "--overwrite" if overwrite else "a second run in it"
        rundir.check_fresh_target(run_dir, overwrite)
    world, device = distributed.start(config.device, config.dist_timeout)  # SINGLE: no torchrun
    if not world.is_main:
        console = Console(quiet=True)
    lock = RunLock(run_dir)
    try:
        _settled(world, lambda: rundir.claim(run_dir, lock, action, fresh=resume is None,
                                             overwrite=overwrite), everywhere=False)
        pruning = _settled(world, lambda: PruningRun(  # data and model errors before any write
            config, run_dir, console, (load_data or load_run_data)(config), world=world,
            device=device))
        if resume is None:
            _settled(world, lambda: _prepare_fresh(run_dir, lock, config, action, overwrite,
                                                   world.size), everywhere=False)
        elif world.is_main:
            rundir.remove_stale_temps(run_dir)  # a killed write's temp files (we hold the lock)
        if world.is_main:  # versions, commit, device, argv, host, start time: one per session
            provenance.start_session(run_dir / rundir.PROVENANCE, device=pruning.device,
                                     resumed=resume is not None)
        ranks = f" · {world.size} processes" if world.distributed else ""
        console.print(f"run directory: [bold]{run_dir}[/]  ({config.method} · {config.arch} · "
                      f"{config.dataset} · backend {pruning.backend_name} on {pruning.device}"
                      f"{ranks})")
        if loggers and world.is_main:  # --logger: after the run directory exists, before training
            pruning.loggers = Loggers(
                # fade epochs (--fade-epochs) get step numbers of their own
                loggers, run_dir, config.to_dict(), config.epochs + config.fade_epochs,
                lambda line: console.print(f"[yellow]warning:[/] {escape(line)}",
                                           highlight=False),
                **(logger_options or {}))
        try:
            pruning.run(resume=resume is not None)
        finally:
            if pruning.loggers is not None:
                pruning.loggers.close()
        if world.is_main:
            provenance.end_session(run_dir / rundir.PROVENANCE)
    finally:
        lock.release()
        distributed.stop(world)
    console.print(f"done: {run_dir}")
    return run_dir


def _settled(world: World, step: Any, *, everywhere: bool = True) -> Any:
    """``step()`` on every rank (or on rank 0 alone), then all ranks go on or stop together."""
    if not world.distributed:
        return step()
    result, error = None, None
    if everywhere or world.is_main:
        try:
            result = step()
        except UserError as exc:
            error = exc
    world.settle(error)
    return result


def default_run_dir(config: RunConfig) -> Path:
    return rundir.default_run_dir(config.method, config.arch, config.dataset)


def _prepare_fresh(run_dir: Path, lock: RunLock, config: RunConfig, action: str,
                   overwrite: bool, world_size: int = 1) -> None:
    """Create or (``--overwrite``) empty the run directory under the lock; write config.toml."""
    def write_config(path: Path) -> None:
        save_config(dataclasses.replace(config, out=str(run_dir)), path,
                    launch={"world_size": world_size})

    rundir.prepare_fresh(run_dir, lock, action, overwrite, write_config)
    kill_point("setup-after-config")  # test seam: the run is a run directory, not yet started
