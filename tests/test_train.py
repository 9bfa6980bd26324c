"""Train and evaluate (issue 7): metrics on oracle and random features, the text draw, the config,
then real runs: a tiny export of the Ray Charles ZIM, training with exact resume, the embedded
bridge model on the CIFAR-10 subset, and the two-arm comparison."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from conftest import DATA, ZIM
from test_model_plugins import _save_tiny
from typer.testing import CliRunner

from realsyn.cli import app
from realsyn.config import ConfigError
from realsyn.train import metrics
from realsyn.train.config import TEXT_FIELDS, load_train_config
from realsyn.train.data import draw_text

CIFAR = DATA / "cifar10"
TINY = ["image_size=32", "patch_size=8", "vision_width=64", "text_width=64", "vision_layers=2", "text_layers=2",
        "heads=2", "context_length=32", "batch_size=16", "threads=1", "embed_dim=64", "checkpoint_every=25"]
# one torch thread: on a shared 2-core machine two threads spin-wait and run ~10x slower
runner = CliRunner()


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def sets(*pairs: str) -> list[str]:
    return [x for p in pairs for x in ("--set", p)]


# --- pure logic -------------------------------------------------------------------------------

def test_recalls_oracle_and_random() -> None:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(60, 32)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    owner = np.repeat(np.arange(60), 2)  # two captions per image
    oracle = metrics.recalls(images, images[owner], owner)
    assert all(v == 1.0 for side in oracle.values() for v in side.values())

    n, trials = 200, 20
    found = {k: [] for k in (1, 5, 10)}
    for t in range(trials):
        r = np.random.default_rng(t)
        result = metrics.recalls(r.normal(size=(n, 16)), r.normal(size=(n, 16)), np.arange(n))
        for k in found:
            found[k] += [result["text_to_image"][f"R@{k}"], result["image_to_text"][f"R@{k}"]]
    for k, values in found.items():  # chance: k / n
        assert abs(np.mean(values) - k / n) < 0.4 * k / n + 0.005, (k, np.mean(values))


def test_classification_metrics() -> None:
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    labels = np.array([0, 1, 1, 0])
    out = metrics.classification(scores, labels, ["a", "b", "c"])
    assert out["top1"] == 0.5 and out["per_class"] == {"a": 0.5, "b": 0.5, "c": 0.0}
    assert metrics.topk_accuracy(scores, labels, 2) == 0.75 and out["top5"] == 1.0 and out["chance"] == 1 / 3


def test_text_draw_follows_probabilities() -> None:
    meta = {"text1": "one", "text2": "two", "text3": "three", "syn_text": "syn"}
    rng = random.Random(0)
    uniform = load_train_config().text_probs
    counts = {t: 0 for t in meta.values()}
    for _ in range(8000):
        counts[draw_text(meta, uniform, rng)] += 1
    assert all(abs(c / 8000 - 0.25) < 0.02 for c in counts.values()), counts
    realistic = load_train_config(None, {"text_probs.syn_text": 0}).text_probs
    assert realistic == {"text1": 0.25, "text2": 0.25, "text3": 0.25, "syn_text": 0.0}
    assert "syn" not in {draw_text(meta, realistic, rng) for _ in range(500)}
    sparse = {"text1": "one", "text2": "", "text3": None, "syn_text": "syn"}
    assert {draw_text(sparse, uniform, rng) for _ in range(200)} == {"one", "syn"}  # empty texts never drawn
    assert draw_text({"text1": "", "syn_text": "syn"}, realistic, rng) == "syn"  # nothing else to draw


def test_train_config(tmp_path: Path) -> None:
    cfg = load_train_config()
    assert (cfg.lr, cfg.weight_decay, cfg.beta1, cfg.beta2, cfg.eps, cfg.pct_start) == (1e-3, 0.2, 0.9, 0.98, 1e-6, 0.1)
    assert (cfg.init_temperature, cfg.max_logit_scale) == (0.07, 100.0) and set(cfg.text_probs) == set(TEXT_FIELDS)
    path = tmp_path / "c.yaml"
    path.write_text("extract: {docs_per_part: 4}\ntrain:\n  batch_size: 8\n  text_probs: {text1: 1}\n")
    cfg = load_train_config(path, {"train.steps": 5})
    assert cfg.batch_size == 8 and cfg.steps == 5 and cfg.text_probs["text2"] == 0.0
    for bad, message in (({"lr_typo": 1}, "unknown config key 'train.lr_typo'"),
                         ({"text_probs.text4": 1}, "train.text_probs"), ({"steps": 1}, "train.steps")):
        with pytest.raises(ConfigError, match=message):
            load_train_config(None, bad)


def test_errors_are_one_line(tmp_path: Path) -> None:
    code, out = cli("eval", "--model", "no-such-model", "--task", "zeroshot", "--data", CIFAR)
    assert code == 2 and "realsyn: error: no run folder or model 'no-such-model'" in out
    code, out = cli("eval", "--model", "bridge", "--task", "linear-probe", "--data", CIFAR / "test")
    assert code == 2 and "linear probe needs" in out
    code, out = cli("train", "--data", tmp_path / "nothing", "--out", tmp_path / "run")
    assert code == 2 and "no export folder" in out
    code, out = cli("train", "--data", tmp_path, "--out", tmp_path / "run", "--set", "lr=-1")
    assert code == 2 and "train.lr" in out and len(out.strip().splitlines()) == 1


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is not None, reason="open_clip is installed")
def test_open_clip_training_needs_the_extra(tmp_path: Path) -> None:
    code, out = cli("train", "--data", tmp_path, "--out", tmp_path / "run", "--set", "model=open_clip:ViT-B-32")
    assert code == 2 and "pip install open_clip_torch" in out


def test_eval_hf_model_folder(tmp_path: Path, data_dir: Path) -> None:
    """A transformers CLIP folder (tiny, random weights) goes through the same zero-shot path."""
    folder = _save_tiny(tmp_path / "clip", "clip")
    code, out = cli("eval", "--model", f"hf:{folder}", "--task", "zeroshot", "--data", CIFAR, "--limit", 3,
                    "--templates", "photo", "--json")
    assert code == 0, out
    result = last_json(out)
    assert result["model"] == f"hf:{folder}" and result["n"] == 30 and 0 <= result["top1"] <= result["top5"] <= 1


# --- real data --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A small export of the Ray Charles ZIM (template LLM, no perplexity filter): ~66 samples."""
    work = tmp_path_factory.mktemp("train") / "work"
    # the pHash gate of image dedup (on for the bridge) keeps 81 samples, look-alike album covers
    # among them; without it 66, the data this test's figures were measured on
    code, out = cli("run", ZIM, "--out", work, "--until", "export", "--workers", "1", "--quiet",
                    *sets("extract.sentences.perplexity=false", "models.llm=template", "embed.image_dedup_phash=off"))
    assert code == 0, out
    folder = work / "export" / "100M"
    assert json.loads((folder / "sizes.json").read_text())["00000.tar"] >= 40
    return folder


@pytest.fixture(scope="module")
def trained(export: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The tiny vit CLIP trained 100 steps (~25 epochs of the 66 samples) through the CLI."""
    run = tmp_path_factory.mktemp("run") / "run"
    code, out = cli("train", "--data", export, "--out", run, "--steps", 100, "--quiet", *sets(*TINY))
    assert code == 0, out
    return run, last_json(out)


@pytest.mark.slow
def test_train_loss_falls(trained: tuple[Path, dict]) -> None:
    run, summary = trained
    assert summary["step"] == summary["total_steps"] == 100
    assert summary["loss_last"] < summary["loss_first"] - 0.5, summary  # measured 2.80 -> 1.74
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(10, 101, 10)) and all(0 < r["logit_scale"] <= 100 for r in log)
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step-00000075.pt", "step-00000100.pt"]


@pytest.mark.slow
def test_resume_gives_the_same_run(trained: tuple[Path, dict], export: Path, tmp_path: Path) -> None:
    """Stopped at step 50 and re-run: the same weights, stream position and losses as without a stop."""
    full, _ = trained
    run = tmp_path / "run"
    code, out = cli("train", "--data", export, "--out", run, "--steps", 100, "--stop-at", 50, "--quiet", *sets(*TINY))
    assert code == 0 and last_json(out)["step"] == 50
    code, out = cli("train", "--data", export, "--out", run, "--steps", 100, "--quiet", *sets(*TINY))
    assert code == 0 and last_json(out)["start_step"] == 50 and last_json(out)["step"] == 100
    a, b = (torch.load(r / "checkpoints" / "step-00000100.pt", weights_only=True) for r in (full, run))
    assert a["position"] == b["position"] == 1600 and a["step"] == b["step"] == 100
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(x, y) for x, y in zip(a["optimizer"]["state"][0].values(), b["optimizer"]["state"][0].values()))
    loss = [[json.loads(line)["loss"] for line in (r / "log.jsonl").read_text().splitlines()] for r in (full, run)]
    assert loss[0] == loss[1] and len(loss[0]) == 10
    code, out = cli("train", "--data", export, "--out", run, "--steps", 100, "--quiet", *sets(*TINY, "lr=0.01"))
    assert code == 2 and "other settings (lr)" in out


@pytest.mark.slow
def test_eval_trained_run(trained: tuple[Path, dict], export: Path, tmp_path: Path) -> None:
    run, _ = trained
    code, out = cli("eval", "--model", run, "--task", "retrieval", "--data", export, "--json", "--quiet")
    assert code == 0, out
    result = last_json(out)
    assert result["images"] >= 40 and result["texts"] > result["images"]
    assert set(result["image_to_text"]) == set(result["text_to_image"]) == {"R@1", "R@5", "R@10"}
    # trained on these very pairs: well above chance (R@10 = 10 / images for text -> image)
    assert result["text_to_image"]["R@10"] > 2 * 10 / result["images"], result
    lines = [json.dumps({"image": str(p), "captions": [f"a photo of a {p.parent.name}"]})
             for p in sorted((CIFAR / "test").glob("*/000[0-2].jpg"))]
    (tmp_path / "set.jsonl").write_text("\n".join(lines))
    code, out = cli("eval", "--model", run, "--task", "retrieval", "--data", tmp_path / "set.jsonl", "--json")
    assert code == 0 and last_json(out)["images"] == 30 and last_json(out)["texts"] == 30
    code, out = cli("eval", "--model", run, "--task", "zeroshot", "--data", CIFAR, "--limit", 5, "--json")
    assert code == 0 and last_json(out)["n"] == 50 and len(last_json(out)["per_class"]) == 10


@pytest.mark.slow
def test_bridge_zeroshot_cifar10(data_dir: Path, report: Callable[..., None]) -> None:
    code, out = cli("eval", "--model", "bridge", "--task", "zeroshot", "--data", CIFAR, "--limit", 20, "--json", "--quiet")
    assert code == 0, out
    result = last_json(out)
    assert result["n"] == 200 and result["chance"] == 0.1 and len(result["per_class"]) == 10
    report(f"bridge zero-shot CIFAR-10 ({result['n']} images): top-1 {result['top1']:.3f}, top-5 {result['top5']:.3f} (chance 0.1)")
    assert result["top1"] > 0.2 and result["top5"] > 0.6, result  # measured 0.325 / 0.79
    assert result["mean_per_class"] == pytest.approx(np.mean(list(result["per_class"].values())))


@pytest.mark.slow
def test_bridge_linear_probe_cifar10(data_dir: Path, report: Callable[..., None]) -> None:
    code, out = cli("eval", "--model", "bridge", "--task", "linear-probe", "--data", CIFAR, "--limit", 20, "--json", "--quiet")
    assert code == 0, out
    result = last_json(out)
    assert result["n_train"] == result["n"] == 200 and len(result["per_class"]) == 10
    report(f"bridge linear probe CIFAR-10: top-1 {result['top1']:.3f} (chance 0.1)")
    assert result["top1"] > 0.3, result  # chance 0.1; measured 0.45


@pytest.mark.slow
def test_locked_mode_trains_heads_only(export: Path, tmp_path: Path) -> None:
    from realsyn.train.checkpoint import load_model

    code, out = cli("train", "--data", export, "--out", tmp_path / "locked", "--steps", 30, "--quiet",
                    *sets("model=locked", "batch_size=16", "threads=1"))
    assert code == 0, out
    summary = last_json(out)
    assert summary["loss_last"] < summary["loss_first"] - 0.3, summary
    model, state = load_model(tmp_path / "locked")
    assert set(state["model"]) == {"logit_scale", "image_head.weight", "image_head.bias", "text_head.weight", "text_head.bias"}


@pytest.mark.slow
def test_compare_two_arms(export: Path, tmp_path: Path) -> None:
    code, out = cli("compare", "--data", export, "--out", tmp_path / "cmp", "--steps", 10, "--eval", f"retrieval={export}",
                    "--limit", 30, "--json", "--quiet", *sets(*TINY))
    assert code == 0, out
    result = last_json(out)
    assert list(result["arms"]) == ["realistic", "realistic+synthetic"]
    assert result["arms"]["realistic"]["overrides"] == {"text_probs.syn_text": 0.0}
    header = out.splitlines()[0]
    assert "realistic" in header and "realistic+synthetic" in header and "retrieval t2i R@1" in out
    code, out = cli("compare", "--data", export, "--out", tmp_path / "cmp", "--eval", "nonsense=x")
    assert code == 2 and "unknown task 'nonsense'" in out
