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
