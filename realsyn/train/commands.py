"""The `train`, `eval` and `compare` commands, added to the main typer app by `register(app)`.

Thin functions: the work happens in `trainer`, `evaluate` and `compare`, imported when a command
runs (torch is never imported at CLI start-up).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config; its `train` section is used.")
SetOpt = typer.Option(None, "--set", help="Override one train value, e.g. --set batch_size=16 or --set text_probs.syn_text=0 (repeatable).")
StepsOpt = typer.Option(None, "--steps", help="Optimiser steps of the run (the schedule's length).")
EpochsOpt = typer.Option(None, "--epochs", help="Passes over the data (when --steps is not given).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bars.")
JsonOpt = typer.Option(False, "--json", help="Print the result as one JSON object on the last line.")
LimitOpt = typer.Option(None, "--limit", help="At most this many images per class (classification) or images (retrieval).")


def _overrides(sets: list[str] | None, steps: int | None = None, epochs: float | None = None) -> dict[str, Any]:
    from realsyn.console import overrides

    out = overrides(sets)
    if steps is not None:
        out.update(steps=steps, epochs=None)
    elif epochs is not None:
        out.update(epochs=epochs, steps=None)
    return out


def _setup(quiet: bool) -> None:
    from realsyn.console import setup

    setup(quiet)


def _guarded(fn: Any) -> Any:
    from realsyn.console import guard

    return guard(fn)


def train_cmd(data: Path = typer.Option(..., "--data", "-d", help="Export folder WORK/export/SCALE (WebDataset shards)."),
              out: Path = typer.Option(..., "--out", "-o", help="Run folder (checkpoints, log.jsonl, train.yaml); re-run to resume."),
              steps: int | None = StepsOpt, epochs: float | None = EpochsOpt,
              stop_at: int | None = typer.Option(None, "--stop-at", help="Stop (with a checkpoint) after this step; re-run to continue."),
              config: Path | None = ConfigOpt, set_: list[str] | None = SetOpt, quiet: bool = QuietOpt) -> None:
    """Train a CLIP on exported shards (InfoNCE, AdamW + one-cycle); resumes from RUN's last checkpoint."""
    def go() -> None:
        from realsyn.train.config import load_train_config
        from realsyn.train.trainer import train

        _setup(quiet)
        typer.echo(json.dumps(train(load_train_config(config, _overrides(set_, steps, epochs)), data, out, stop_at)))

    _guarded(go)


def eval_cmd(model: str = typer.Option(..., "--model", "-m", help="A run folder or checkpoint of `realsyn train`, `bridge`, `hf:DIR` or `open_clip:ARCH:WEIGHTS`."),
             task: str = typer.Option(..., "--task", "-t", help="zeroshot, linear-probe or retrieval."),
             data: Path = typer.Option(..., "--data", "-d", help="Class folders (zeroshot: ROOT/test/ if present; linear-probe: ROOT/train/ and ROOT/test/), or a captions .jsonl / export folder (retrieval)."),
             limit: int | None = LimitOpt,
             templates: str = typer.Option("ensemble", "--templates", help="Zero-shot prompts: ensemble (10 CLIP CIFAR prompts), photo, plain."),
             device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
             json_: bool = JsonOpt, quiet: bool = QuietOpt) -> None:
    """Evaluate a model: zero-shot top-1/top-5, linear probe, or image-text recall@1/5/10 both ways."""
    def go() -> None:
        from realsyn.train.evaluate import evaluate, summary

        _setup(quiet)
        result = evaluate(model, task, data, limit, templates, device)
        typer.echo(summary(result))
        if json_:
            typer.echo(json.dumps(result))

    _guarded(go)


def compare_cmd(data: list[Path] = typer.Option(..., "--data", "-d", help="Export folder of arm A, then of arm B (one folder: both arms use it)."),
                out: Path = typer.Option(..., "--out", "-o", help="Folder of the two runs (OUT/ARM)."),
                eval_: list[str] = typer.Option(..., "--eval", help="TASK=PATH to evaluate both arms on, e.g. zeroshot=../cifar10 (repeatable)."),
                set_a: list[str] | None = typer.Option(None, "--set-a", help="Train override of arm A only (repeatable)."),
                set_b: list[str] | None = typer.Option(None, "--set-b", help="Train override of arm B only (repeatable)."),
                steps: int | None = StepsOpt, epochs: float | None = EpochsOpt, limit: int | None = LimitOpt,
                config: Path | None = ConfigOpt, set_: list[str] | None = SetOpt,
                json_: bool = JsonOpt, quiet: bool = QuietOpt) -> None:
    """Train one model on two arms (default: realistic-only vs realistic+synthetic texts); metrics side by side."""
    def go() -> None:
        from realsyn.io.readers import InputError
        from realsyn.train import compare

        _setup(quiet)
        if len(data) > 2:
            raise InputError("compare takes one or two --data folders")
        evals = []
        for item in eval_:
            task, sep, path = item.partition("=")
            if not sep:
                raise InputError(f"--eval takes TASK=PATH, got '{item}'")
            evals.append((task, Path(path)))
        arms = compare.default_arms(data, [_overrides(set_a), _overrides(set_b)])
        result = compare.compare(arms, out, config, _overrides(set_, steps, epochs), evals, limit)
        typer.echo(compare.table(result))
        if json_:
            typer.echo(json.dumps(result))

    _guarded(go)


def register(app: typer.Typer) -> None:
    """Add `train`, `eval` and `compare` to the app."""
    app.command("train")(train_cmd)
    app.command("eval")(eval_cmd)
    app.command("compare")(compare_cmd)
