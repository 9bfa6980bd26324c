"""Contrastive training on exported shards: InfoNCE with a learnable temperature, AdamW and a
one-cycle schedule (the paper's recipe), checkpoints and exact resume.

A run folder holds `train.yaml` (the resolved config), `log.jsonl` (loss every `log_every`
steps) and `checkpoints/`. Re-running the same command continues from the latest checkpoint;
the result equals an uninterrupted run (same data order, same text draws, same states).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from realsyn.config import ConfigError
from realsyn.models.imaging import cpu_count
from realsyn.models.registry import resolve_device
from realsyn.runtime.progress import bar
from realsyn.runtime.workspace import atomic_path
from realsyn.train import checkpoint
from realsyn.train.config import TrainConfig
from realsyn.train.data import batches, sample_count
from realsyn.train.model import ClipModel, build_model

log = logging.getLogger(__name__)
RUNTIME_FIELDS = {"device", "threads", "checkpoint_every", "keep_checkpoints", "log_every"}  # may change on resume


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of L2-normalised pairs (row i of each is a pair)."""
    logits = logit_scale.exp() * image @ text.T
    labels = torch.arange(len(image), device=image.device)
    return (nn.functional.cross_entropy(logits, labels) + nn.functional.cross_entropy(logits.T, labels)) / 2


def optimiser(model: nn.Module, cfg: TrainConfig, total: int) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW (no decay on gains, biases and the temperature, as OpenCLIP) and OneCycleLR."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    warmup = max(cfg.pct_start, 2 / total)  # torch's OneCycleLR needs >= 2 warm-up steps
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=warmup,
                                                cycle_momentum=False)
    return opt, sched


def total_steps(cfg: TrainConfig, samples: int) -> int:
    """The run's length: `steps`, else ceil(epochs x samples / batch), else one epoch (at least 3)."""
    if cfg.steps is not None:
        return cfg.steps
    return max(3, math.ceil((cfg.epochs or 1.0) * samples / cfg.batch_size))


def _identity(cfg: TrainConfig, data: Path) -> dict[str, Any]:
    """What defines a run (a resumed run must match it)."""
    return {"data": str(data.resolve()), **cfg.model_dump(exclude=RUNTIME_FIELDS)}


def _check_resume(state: dict[str, Any], cfg: TrainConfig, data: Path) -> None:
    old = {"data": state["data"], **TrainConfig.model_validate(state["config"]).model_dump(exclude=RUNTIME_FIELDS)}
    new = _identity(cfg, data)
    diff = sorted(k for k in new if old.get(k) != new[k])
    if diff:
        raise ConfigError(f"the run folder holds a run with other settings ({', '.join(diff)}); "
                          f"use a new --out or the same settings to resume")


def _append_log(path: Path, rows: list[dict[str, Any]], after: int | None = None) -> None:
    """Append rows to log.jsonl; with `after`, first drop the rows past that step (a resumed run)."""
    if after is not None and path.exists():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= after]
        path.write_text("".join(f"{line}\n" for line in kept))
    with path.open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def _state(model: ClipModel, opt: Any, sched: Any, cfg: TrainConfig, data: Path, step: int, position: int) -> dict[str, Any]:
    return {"step": step, "position": position, "config": cfg.model_dump(mode="json"), "data": str(data.resolve()),
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}


def train(cfg: TrainConfig, data: Path, run: Path, stop_at: int | None = None) -> dict[str, Any]:
    """Train (or resume) the run in `run` on the export folder `data`; stop after step `stop_at`
    when given (a checkpoint is written). Returns a summary of this invocation."""
    torch.set_num_threads(cfg.threads or cpu_count())
    device = resolve_device(cfg.device)
    model = build_model(cfg).to(device)  # first: a bad model spec fails before the data is read
    total = total_steps(cfg, sample_count(data))
    cfg = cfg.model_copy(update={"steps": total, "epochs": None})
    opt, sched = optimiser(model, cfg, total)
    step = position = 0
    found = checkpoint.checkpoints(run)
    if found:
        state = checkpoint.load(found[-1])
        _check_resume(state, cfg, data)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, position = state["step"], state["position"]
    run.mkdir(parents=True, exist_ok=True)
    with atomic_path(run / "train.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(_identity(cfg, data), sort_keys=False))
    start, end = step, min(total, stop_at or total)
    losses: list[float] = []
    rows: list[dict[str, Any]] = []
    _append_log(run / "log.jsonl", [], after=start)
    began = time.time()
    it = batches(data, cfg.batch_size, cfg.text_probs, cfg.seed, cfg.shuffle_buffer, position)
    model.train()
    with bar("train", "step", total) as progress:
        progress.update(start)
        while step < end:
            position, images, texts = next(it)
            image, text = model(model.image_inputs(images).to(device), model.text_inputs(texts).to(device))
            loss = clip_loss(image, text, model.logit_scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(cfg.max_logit_scale))
            step += 1
            losses.append(loss.item())
            rate = len(losses) * cfg.batch_size / max(time.time() - began, 1e-9)
            progress.update(1)
            progress.set_postfix(loss=f"{losses[-1]:.3f}", samples_s=f"{rate:.0f}")
            if step % cfg.log_every == 0 or step == end:
                rows.append({"step": step, "loss": round(losses[-1], 5), "lr": sched.get_last_lr()[0],
                             "logit_scale": round(model.logit_scale.detach().exp().item(), 4), "samples_per_s": round(rate, 2)})
            if step % cfg.checkpoint_every == 0 or step == end:
                _append_log(run / "log.jsonl", rows)
                rows = []
                checkpoint.save(run, _state(model, opt, sched, cfg, data, step, position), cfg.keep_checkpoints)
    seconds = time.time() - began
    head, tail = losses[:10], losses[-10:]
    return {"run": str(run), "data": str(data), "model": cfg.model, "start_step": start, "step": step,
            "total_steps": total, "loss_first": round(sum(head) / len(head), 4) if head else None,
            "loss_last": round(sum(tail) / len(tail), 4) if tail else None,
            "logit_scale": round(model.logit_scale.detach().exp().item(), 3), "seconds": round(seconds, 2),
            "samples_per_s": round(len(losses) * cfg.batch_size / max(seconds, 1e-9), 1),
            "checkpoint": str(checkpoint.checkpoints(run)[-1]) if checkpoint.checkpoints(run) else None}
