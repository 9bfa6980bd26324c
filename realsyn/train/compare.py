"""`realsyn compare`: the same model trained in two arms, evaluated on the same tasks, side by side.

An arm is an export folder plus train overrides. The default pair is the paper's ablation on one
export: realistic texts only (`text_probs.syn_text = 0`) against realistic + synthetic texts
(the default uniform draw). Each arm trains into OUT/NAME (resumable like `realsyn train`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from realsyn.train.config import TrainConfig, load_train_config
from realsyn.train.evaluate import check, evaluate
from realsyn.train.trainer import train

REALISTIC_ONLY = {"text_probs.syn_text": 0.0}


@dataclass(frozen=True)
class Arm:
    name: str
    data: Path
    overrides: dict[str, Any] = field(default_factory=dict)


def default_arms(data: Sequence[Path], overrides: Sequence[dict[str, Any]]) -> list[Arm]:
    """Two arms from one or two export folders and per-arm overrides (none given: realistic-only
    vs realistic + synthetic)."""
    a, b = (list(data) * 2)[:2]
    oa, ob = overrides
    if not oa and not ob and a == b:
        return [Arm("realistic", a, dict(REALISTIC_ONLY)), Arm("realistic+synthetic", b)]
    return [Arm("A", a, dict(oa)), Arm("B", b, dict(ob))]


def metric_rows(result: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of one eval result, keyed `task metric`."""
    task = result["task"]
    if "top1" in result:
        return {f"{task} top1": result["top1"], f"{task} top5": result["top5"]}
    return {f"{task} {side[:1]}2{side.split('_')[-1][:1]} {k}": v
            for side in ("image_to_text", "text_to_image") for k, v in result[side].items()}


def compare(arms: Sequence[Arm], out: Path, config: Path | None, common: dict[str, Any],
            evals: Sequence[tuple[str, Path]], limit: int | None = None) -> dict[str, Any]:
    """Train every arm, evaluate each on every (task, data); the trained runs and all figures."""
    for task, path in evals:
        check(task, path)
    results: dict[str, Any] = {}
    for arm in arms:
        cfg: TrainConfig = load_train_config(config, {**common, **arm.overrides})
        run = train(cfg, arm.data, out / arm.name.replace("+", "_plus_"))
        evaluated = [evaluate(run["run"], task, path, limit=limit, seed=cfg.seed) for task, path in evals]
        metrics = {k: v for r in evaluated for k, v in metric_rows(r).items()}
        results[arm.name] = {"data": str(arm.data), "overrides": arm.overrides, "train": run, "metrics": metrics}
    return {"arms": results}


def table(result: dict[str, Any]) -> str:
    """Metrics as rows, arms as columns, plus the training losses."""
    arms = result["arms"]
    names = list(arms)
    rows = {"loss first": {n: arms[n]["train"]["loss_first"] for n in names},
            "loss last": {n: arms[n]["train"]["loss_last"] for n in names}}
    for n in names:
        for metric, value in arms[n]["metrics"].items():
            rows.setdefault(metric, {})[n] = value
    width = max(len(m) for m in rows) + 2
    cols = [max(len(n), 8) + 2 for n in names]
    lines = ["".ljust(width) + "".join(n.rjust(c) for n, c in zip(names, cols))]
    for metric, values in rows.items():
        cells = [f"{values[n]:.4f}" if isinstance(values.get(n), float) else str(values.get(n, "-")) for n in names]
        lines.append(metric.ljust(width) + "".join(v.rjust(c) for v, c in zip(cells, cols)))
    return "\n".join(lines)
