"""The stage contract: a stage's key is derived from what it declares, so changing any declared
config field or file makes exactly that stage and the later ones stale in `realsyn status`."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from realsyn import pipeline
from realsyn.cli import app
from realsyn.config import load_config, to_yaml
from realsyn.prompts import prompt_path
from realsyn.runtime.context import Context
from realsyn.runtime.launch import make_executor
from realsyn.runtime.workspace import Workspace

# one valid change per config entry a stage may declare; a new declaration needs a line here
CHANGES = {
    "extract": ("extract.items_per_part", 999), "download": ("download.timeout", 7.0),
    "models.llm": ("models.llm", "template"), "models.nsfw": ("models.nsfw", "other-nsfw"),
    "models.langid": ("models.langid", "other-langid"), "embed": ("embed.dtype", "float32"),
    "models.joint": ("models.joint", "bridge:5"), "retrieve": ("retrieve.k", 2), "synth": ("synth.tags_k", 4),
    "models.tagger": ("models.tagger", "other-tagger"), "models.captioner": ("models.captioner", "other-captioner"),
    "balance": ("balance.clusters", 7), "export": ("export.samples_per_shard", 77), "report": ("report.gallery", 5),
}
# every conditional field on: the perplexity LM, the NSFW scorer, language filters, downloads
ALL_ON = {"extract.images.max_nsfw": 0.9, "extract.sentences.languages": ["en"], "download.enabled": True}


def _finished(root: Path, corpus: Path, overrides: dict) -> Workspace:
    """A workspace whose every stage finished with the keys of `overrides` (no real output)."""
    ws = Workspace(root)
    cfg = load_config(None, overrides)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(to_yaml(cfg))
    ctx = Context(ws, cfg, make_executor("local", 1), [corpus])
    for name, key in pipeline.keys(ctx).items():
        ws.begin(name, key, **({"inputs": [str(corpus)]} if name == "extract" else {}))
        ws.finish(name, {}, 0.0)
    return ws


def _stale(root: Path, overrides: dict) -> list[str]:
    """The stages `realsyn status` calls stale after the config changes to `overrides`."""
    (root / "config.yaml").write_text(to_yaml(load_config(None, overrides)))
    done = CliRunner().invoke(app, ["status", str(root)])
    assert done.exit_code == 0, done.output
    return [line.split()[0] for line in done.output.splitlines() if re.match(r"^\w+\s+stale\b", line)]


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.html").write_text("<p>A red bicycle leans on the old stone wall of the harbour.</p>")
    return folder


@pytest.mark.parametrize("base", [{}, ALL_ON], ids=["defaults", "all-on"])
def test_each_declared_field_stales_exactly_its_stage_and_later(tmp_path, corpus, base):
    ws = _finished(tmp_path / "w", corpus, base)
    cfg = load_config(None, base)
    declared = {f: i for i, s in reversed(list(enumerate(pipeline.STAGES))) for f in s.config_fields(cfg)}
    assert set(declared) <= set(CHANGES), f"add a change for {set(declared) - set(CHANGES)}"
    assert _stale(ws.root, base) == []
    for field, first in sorted(declared.items()):
        key, value = CHANGES[field]
        assert _stale(ws.root, {**base, key: value}) == pipeline.NAMES[first:], field


def test_synth_declares_the_language_model_its_guard_uses():
    cfg = load_config(None)
    synth = pipeline.STAGES[pipeline.NAMES.index("synth")]
    assert cfg.synth.language and "models.langid" in synth.config_fields(cfg)
    assert "models.langid" not in synth.config_fields(load_config(None, {"synth.language": None}))


def test_declared_files_stale_exactly_their_stage_and_later(tmp_path, corpus):
    """A prompt file edited in place redoes synth and later; a local model folder whose weights
    change redoes embed and later."""
    prompt = tmp_path / "my-prompt.yaml"
    shutil.copy(prompt_path("fuse-v1"), prompt)
    model = tmp_path / "clip"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"\0" * 1000)
    base = {"synth.prompt": str(prompt), "models.joint": f"hf:{model}"}
    ws = _finished(tmp_path / "w", corpus, base)
    assert _stale(ws.root, base) == []
    data = yaml.safe_load(prompt.read_text())
    data["version"] = "mine-2"
    prompt.write_text(yaml.safe_dump(data))
    assert _stale(ws.root, base) == pipeline.NAMES[pipeline.NAMES.index("synth"):]
    ws = _finished(tmp_path / "w2", corpus, base)
    (model / "model.safetensors").write_bytes(b"\1" * 1000)
    assert _stale(ws.root, base) == pipeline.NAMES[pipeline.NAMES.index("embed"):]


def test_model_stages_declare_what_the_default_ray_config_runs_on_actors():
    from realsyn.config import RayConfig

    assert [s.name for s in pipeline.STAGES if s.resources.model] == RayConfig().actors
