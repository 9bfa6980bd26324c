"""Shared test fixtures: the real data folder beside the project, offline model settings."""

import os
from pathlib import Path
from typing import Callable

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
ZIM = DATA / "wiki-raycharles" / "wikipedia_en_ray_charles_2015-06.zim"


@pytest.fixture()
def report(capsys: pytest.CaptureFixture[str]) -> Callable[..., None]:
    """Print a measured figure to the terminal, also when the test passes and output is captured
    (the issues ask for these figures in the test output)."""

    def emit(*args: object) -> None:
        with capsys.disabled():
            print("\n[measured]", *args)

    return emit


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.exists():
        pytest.skip(f"shared test data not found at {DATA}")
    return DATA


ZIM_RUN = ("--quiet", "--set", "extract.sentences.perplexity=false")  # perplexity is tested in test_filters.py


@pytest.fixture(scope="session")
def zim_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`realsyn run` on the Wikipedia ZIM, every stage, once per session (end-to-end checks and
    the real-text checks read it; none of them changes it)."""
    from run_cli import realsyn

    root = tmp_path_factory.mktemp("zim-run") / "work"
    realsyn("run", str(data_dir / "wiki-raycharles"), "--out", str(root), *ZIM_RUN)
    return root


@pytest.fixture(scope="session")
def s3_env() -> dict[str, str]:
    """A real S3 endpoint on loopback (moto's server, speaking the S3 protocol over HTTP) with a
    bucket `realsyn`; returns the environment that points s3fs/botocore at it, also set here."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec

    fsspec.filesystem("s3", skip_instance_cache=True).mkdir("realsyn")
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
