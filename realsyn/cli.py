"""The `realsyn` command line: one thin function per command, no logic."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import typer

from realsyn import pipeline
from realsyn.config import load_config, to_yaml
from realsyn.console import fail, guard, overrides, setup
from realsyn.io import remote
from realsyn.io.readers import InputError
from realsyn.runtime.context import Context
from realsyn.runtime.launch import make_executor
from realsyn.runtime.workspace import Workspace, input_copy, write_text
from realsyn.train.commands import register as register_train

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Turn interleaved image-text documents into CLIP pre-training data (RealSyn).")

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config (default: WORK/config.yaml if present, else built-in defaults).")
SetOpt = typer.Option(None, "--set", help="Override one config value, e.g. --set extract.docs_per_part=16 (repeatable).")
ExecOpt = typer.Option(None, "--executor", help="local or ray (overrides runtime.executor).")
WorkersOpt = typer.Option(None, "--workers", help="Worker processes (overrides runtime.workers; 0 = one per core).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bars.")
JsonOpt = typer.Option(False, "--json", help="Print every count of the stages run (the manifest's counts) as JSON instead of the summary.")
ImagesOpt = typer.Option(None, "--images", help="An img2dataset output folder to take URL-only images from (repeatable; extract.images.sources).")
OutOpt = typer.Option(..., "--out", "-o", help="Workspace folder, or an fsspec URL (s3://, gs://) worked on in a local scratch copy ($REALSYN_SCRATCH).")


def _context(out: str, config: Path | None, sets: list[str] | None, executor: str | None,
             workers: int | None, quiet: bool, inputs: Sequence[str | Path] | None = None,
             images: list[str] | None = None) -> Context:
    """The run's context; `inputs` None means those the workspace's extract stage recorded."""
    setup(quiet)
    ws = _workspace(out)
    ws.check_owned()
    work = ws.root
    if inputs is None:
        inputs = _recorded_inputs(ws)
    if config is None and (work / "config.yaml").exists():
        config = work / "config.yaml"
    changes = overrides(sets)
    if executor is not None:
        changes["runtime.executor"] = executor
    if workers is not None:
        changes["runtime.workers"] = workers
    if images:
        changes["extract.images.sources"] = [i if remote.is_url(i) else str(Path(i).resolve()) for i in images]
    cfg = load_config(config, changes)
    paths = [remote.localize(str(p), work) for p in inputs]  # URLs are fetched into WORK/_inputs
    for p in paths:
        if not p.exists() and input_copy(p, work) is None:  # a URL input's copy: fetched where needed
            raise InputError(f"input not found: {p}")
    ws.claim()
    write_text(to_yaml(cfg), work / "config.yaml")
    return Context(ws, cfg, make_executor(cfg.runtime.executor, cfg.runtime.workers, cfg.runtime.ray), paths)


def _workspace(out: str) -> Workspace:
    """The workspace `out`; a URL one needs its fsspec protocol package (s3fs, gcsfs)."""
    try:
        return Workspace(out)
    except (ImportError, ValueError) as exc:
        raise InputError(f"cannot open workspace {out}: {exc}".splitlines()[0]) from None


def _kept_read(counts: Any) -> str:
    """"table kept / read" for every counted table of a stage's counts."""
    if not isinstance(counts, dict):
        return ""
    tables = [f"{k} {v.get('kept', 0):,} / {v['read']:,}" for k, v in counts.items() if isinstance(v, dict) and "read" in v]
    docs = counts.get("documents")
    return ", ".join(([f"documents {docs:,}"] if isinstance(docs, int) else []) + tables)


def summary(counts: dict[str, Any], ws: Workspace) -> list[str]:
    """What a person wants at the end of a run: kept / read per stage, where the shards and the
    report are, and the next command to try."""
    lines = [f"{name:9} {_kept_read(c) or 'done'}" for name, c in counts.items()]
    scales = sorted(p for p in ws.dir("export").glob("*") if p.is_dir()) if "export" in counts else []
    lines += [f"shards ({s.name}): {s.resolve()}/" for s in scales]
    if "report" in counts:
        lines.append(f"report: {(ws.dir('report') / 'index.html').resolve()}")
    lines.append(f"workspace: {ws.name} (realsyn status {ws.name}; every count: realsyn run ... --json)")
    if scales:
        lines.append(f"next: realsyn train --data {scales[-1].resolve()} --out RUN")
    elif counts and list(counts)[-1] != pipeline.NAMES[-1]:
        after = pipeline.NAMES[pipeline.NAMES.index(list(counts)[-1]) + 1]
        lines.append(f"next: realsyn run INPUT... --out {ws.name} (continues with {after})")
    return lines


def _run(inputs: Sequence[str], out: str, until: str | None, config: Path | None,
         sets: list[str] | None, executor: str | None, workers: int | None, quiet: bool, as_json: bool = False,
         images: list[str] | None = None) -> None:
    def go() -> None:
        if until is not None and until not in pipeline.NAMES:
            fail(f"unknown stage '{until}'; stages: {', '.join(pipeline.NAMES)}")
        ctx = _context(out, config, sets, executor, workers, quiet, inputs, images)
        with ctx.executor:
            counts = pipeline.run(ctx, until)
        if as_json:
            typer.echo(json.dumps(counts, indent=2))
        else:
            typer.echo("\n".join(summary(counts, ctx.ws)))

    guard(go)


@app.command()
def run(inputs: list[str] = typer.Argument(..., help="Input files or folders (.zim, .parquet, .jsonl[.gz], .warc[.gz], .epub, HTML folders), local or fsspec URLs (s3://, gs://, https://)."),
        out: str = OutOpt, until: str | None = typer.Option(None, help="Stop after this stage."),
        config: Path | None = ConfigOpt, set_: list[str] | None = SetOpt,
        executor: str | None = ExecOpt, workers: int | None = WorkersOpt, quiet: bool = QuietOpt,
        as_json: bool = JsonOpt, images: list[str] | None = ImagesOpt) -> None:
    """Run the pipeline on INPUT... into WORK, resuming where it stopped."""
    _run(inputs, out, until, config, set_, executor, workers, quiet, as_json, images)


@app.command()
def extract(inputs: list[str] = typer.Argument(..., help="Input files or folders, local or fsspec URLs."), out: str = OutOpt,
            config: Path | None = ConfigOpt, set_: list[str] | None = SetOpt,
            executor: str | None = ExecOpt, workers: int | None = WorkersOpt, quiet: bool = QuietOpt,
            as_json: bool = JsonOpt, images: list[str] | None = ImagesOpt) -> None:
    """Extract and filter images and sentences (the first stage)."""
    _run(inputs, out, "extract", config, set_, executor, workers, quiet, as_json, images)


def _stage_command(name: str) -> Callable[..., None]:
    def command(out: str = OutOpt, config: Path | None = ConfigOpt, set_: list[str] | None = SetOpt,
                executor: str | None = ExecOpt, workers: int | None = WorkersOpt, quiet: bool = QuietOpt,
                as_json: bool = JsonOpt) -> None:
        guard(lambda: _one_stage(name, _context(out, config, set_, executor, workers, quiet), as_json))

    command.__doc__ = f"Run the {name} stage on an existing workspace."
    return command


def _one_stage(name: str, ctx: Context, as_json: bool) -> None:
    with ctx.executor:
        counts = {name: pipeline.run_stage(ctx, name)}
    typer.echo(json.dumps(counts, indent=2) if as_json else "\n".join(summary(counts, ctx.ws)))


def _recorded_inputs(ws: Workspace) -> list[Path]:
    """The inputs the workspace's extract stage was run on (they key every later stage); a copy
    of a URL input is recorded relative to the workspace."""
    return [ws.root / p if p.startswith(f"{remote.FOLDER}/") else Path(p) for p in ws.stage("extract").get("inputs", [])]


for _name in pipeline.NAMES[1:]:
    if _name != "balance":
        app.command(_name)(_stage_command(_name))


@app.command()
def balance(out: str = OutOpt, dry_run: bool = typer.Option(False, "--dry-run", help="Only print the size each scale would get."),
            cap: list[int] | None = typer.Option(None, "--cap", help="With --dry-run: also show the size of this cap (repeatable)."),
            config: Path | None = ConfigOpt, set_: list[str] | None = SetOpt,
            executor: str | None = ExecOpt, workers: int | None = WorkersOpt, quiet: bool = QuietOpt,
            as_json: bool = JsonOpt) -> None:
    """Run the balance stage (similarity band, k-means, capped draw per named scale)."""
    from realsyn.balance import stage as balance_stage

    def go() -> None:
        ctx = _context(out, config, set_, executor, workers, quiet)
        if not dry_run:
            return _one_stage("balance", ctx, as_json)
        pipeline.check_upstream(ctx, "balance")
        with ctx.executor:
            balance_stage.dry_run(ctx, cap or (), echo=typer.echo)

    guard(go)


@app.command()
def status(work: str = typer.Argument(..., help="Workspace folder or URL.")) -> None:
    """What is done, counts per stage, and what is stale."""
    def go() -> None:
        ws = _workspace(work)
        if not ws.manifest_path.exists():
            fail(f"no workspace at {work} (manifest.json missing)")
        stages = ws.manifest()["stages"]
        cfg_path = ws.root / "config.yaml"
        cfg = load_config(cfg_path if cfg_path.exists() else None)
        inputs = _recorded_inputs(ws)
        known = all(p.exists() or input_copy(p, ws.root) for p in inputs)
        current = pipeline.keys(Context(ws, cfg, make_executor("local", 1), inputs)) if known else {}
        for name in pipeline.NAMES:
            st = stages.get(name)
            if st is None:
                typer.echo(f"{name:9} not run")
                continue
            state, damaged = st.get("status", "?"), ws.damaged(name) if st.get("status") == "done" else []
            if damaged:
                state = "damaged"
            elif state == "done" and current and current.get(name) != st.get("key"):
                state = "stale"
            line = f"{name:9} {state:8} {st.get('seconds', 0):8.1f}s"
            if damaged:
                line += f"  {len(damaged)} file(s) deleted or changed since it finished, e.g. {name}/{damaged[0]}: re-run to redo it"
            if state == "running":
                line += _progress_line(ws, name)
            for table, c in (st.get("counts") or {}).items():
                if isinstance(c, dict) and "read" in c:
                    line += f"  {table}: {c.get('kept', 0)} kept / {c.get('read', 0)} read"
            typer.echo(line)

    guard(go)


def _progress_line(ws: Workspace, name: str) -> str:
    """Tasks done / total, items, rate and ETA of a running stage, from its progress file."""
    try:
        p = json.loads(ws.progress_path.read_text())
    except (OSError, ValueError):
        return ""
    if p.get("stage") != name:
        return ""
    total = p.get("tasks_total")
    line = f"  {p['desc']}: {p['tasks_done']}/{total if total is not None else '?'} tasks, {p['items']} {p['unit']}"
    if p.get("items_per_s"):
        line += f" ({p['items_per_s']:.1f} {p['unit']}/s"
        line += f", ETA {p['eta_seconds']:.0f}s)" if p.get("eta_seconds") is not None else ")"
    age = time.time() - p["updated"]
    return line + (f", last update {age:.0f}s ago (is the run still alive?)" if age > 120 else "")


@app.command("models")
def models_cmd() -> None:
    """List every model backend per role: the spec to write in the config, what it needs, what it is."""
    from realsyn.models import registry

    def go() -> None:
        for role in sorted({b.role for b in registry.backends()}):
            typer.echo(f"models.{role}:")
            for b in (b for b in registry.backends() if b.role == role):
                need = "" if registry.installed(b) else f"  [needs: {', '.join(b.needs)}]"
                typer.echo(f"  {b.syntax:34} {b.about}{need}")
        typer.echo("A spec is NAME or NAME:ARGS; plug-ins add backends with realsyn.models.registry.register().")

    guard(go)


@app.command("config")
def config_cmd(config: Path | None = typer.Option(None, "--config", "-c", help="Show this file resolved against the defaults.")) -> None:
    """Print the config (defaults, or a file resolved), every value documented."""
    guard(lambda: typer.echo(to_yaml(load_config(config)), nl=False))


@app.command()
def demo(out: Path = OutOpt, until: str | None = typer.Option(None, help="Stop after this stage."),
         quiet: bool = QuietOpt, workers: int | None = WorkersOpt, as_json: bool = JsonOpt) -> None:
    """Run the pipeline on the built-in demo corpus (real photos from scikit-image, scikit-learn, matplotlib)."""
    from realsyn.demo import materialize

    corpus = materialize(out / "corpus")
    _run([str(corpus)], str(out / "work"), until, None, None, None, workers, quiet, as_json)  # ends with the paths


register_train(app)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
