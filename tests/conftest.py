import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A folder with tiny random checkpoints of every stage and a weights.toml naming them."""
    folder = tmp_path_factory.mktemp("tiny_home")
    tiny.write_model(folder)
    return folder


@pytest.fixture
def home(tmp_path, tiny_model_dir, monkeypatch) -> Path:
    """A fresh UNCLIP_HOME whose weights.toml adds the tiny model (and makes it the default)."""
    h = tmp_path / "home"
    shutil.copytree(tiny_model_dir, h)
    monkeypatch.setenv("UNCLIP_HOME", str(h))
    monkeypatch.setenv("UNCLIP_QUIET", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return h


@pytest.fixture(autouse=True)
def _one_thread():
    """Speed only, numerics unchanged: one intra-op thread, since two OpenMP threads contending with
    other processes on a small shared machine make these tiny runs about 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _auto_dtype_is_fp32(monkeypatch):
    """`--dtype auto` means bf16 on a CPU with native bf16 (as this project's machines have) and fp32 on others:
    in-process tests compare the verbs' pixels with fp32 references, so they see an fp32 CPU whatever they run
    on. test_precision.py tests the choice itself; subprocess tests run the real one."""
    from unclip_cli.cli import run

    monkeypatch.setattr(run, "native_bf16_cpu", lambda *a: False)
