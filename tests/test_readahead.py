"""The readahead: while one stage samples, the file of the stage that comes next is brought into the page cache."""

import os
import threading
from pathlib import Path

import pytest

from unclip_cli.weights import readahead as ra

needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="needs /proc to name a descriptor's file")


def _files(tmp_path: Path, sizes: dict[str, int]) -> list[Path]:
    out = []
    for name, size in sizes.items():
        p = tmp_path / name
        p.write_bytes(b"\0" * size)
        out.append(p)
    return out


class Recorder:
    """An advise function that records (file, offset, length) and can hold the warming thread."""

    def __init__(self):
        self.calls: list[tuple[str, int, int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.first = threading.Event()

    def __call__(self, fd, offset, length):
        self.calls.append((os.path.basename(os.readlink(f"/proc/self/fd/{fd}")), offset, length))
        self.first.set()
        self.gate.wait(5)


def _join(r: ra.Readahead):
    for t in r.threads:
        t.join(5)
        assert not t.is_alive()


@needs_proc
def test_the_file_after_the_one_loaded_is_warmed_whole_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(ra, "CHUNK", 1000)
    files = _files(tmp_path, {"a": 10, "b": 2500, "c": 10})
    rec = Recorder()
    r = ra.Readahead(files, advise=rec)
    r.loading([files[0]])
    assert rec.calls == []  # nothing is warmed before a load finishes
    r.loaded([files[0]])
    _join(r)
    assert rec.calls == [("b", 0, 1000), ("b", 1000, 1000), ("b", 2000, 500)]
    r.loaded([files[2]])  # the last file: nothing follows it
    _join(r)
    assert len(rec.calls) == 3


@needs_proc
def test_a_new_load_stops_the_warming(tmp_path, monkeypatch):
    monkeypatch.setattr(ra, "CHUNK", 100)
    files = _files(tmp_path, {"a": 10, "b": 10_000, "c": 10})
    rec = Recorder()
    rec.gate.clear()
    r = ra.Readahead(files, advise=rec)
    r.loaded([files[0]])
    assert rec.first.wait(5)
    r.loading([files[2]])  # the loader skipped ahead (e.g. vary has no prior): stop warming b
    rec.gate.set()
    _join(r)
    assert rec.calls == [("b", 0, 100)], rec.calls


@needs_proc
def test_loading_the_file_being_warmed_lets_the_warming_go_on(tmp_path, monkeypatch):
    monkeypatch.setattr(ra, "CHUNK", 100)
    files = _files(tmp_path, {"a": 10, "b": 1000})
    rec = Recorder()
    rec.gate.clear()
    r = ra.Readahead(files, advise=rec)
    r.loaded([files[0]])
    assert rec.first.wait(5)
    r.loading([files[1]])  # its turn came: the kernel reads ahead of the loader
    rec.gate.set()
    _join(r)
    assert [c[1] for c in rec.calls] == list(range(0, 1000, 100))


@needs_proc
def test_two_files_loaded_together_warm_the_one_after_both(tmp_path):
    files = _files(tmp_path, {"text": 10, "vision": 10, "prior": 10})
    rec = Recorder()
    r = ra.Readahead(files, advise=rec)
    r.loaded([files[0], files[1]])
    _join(r)
    assert [c[0] for c in rec.calls] == ["prior"]


def test_a_missing_file_or_a_failing_advise_is_quiet(tmp_path, monkeypatch):
    files = _files(tmp_path, {"a": 10, "b": 10})
    files.append(tmp_path / "gone")
    errors = []
    monkeypatch.setattr(threading, "excepthook", errors.append)  # an exception in a warming thread lands here

    def fails(fd, offset, length):
        raise OSError(22, "Invalid argument")

    r = ra.Readahead(files, advise=fails)
    r.loaded([files[0]])  # warms b: the advice fails
    r.loaded([files[1]])  # warms gone: it cannot be opened
    _join(r)
    assert errors == []
    r._target = files[1]
    r._warm(files[1])  # the same in this thread: nothing raised
    r._warm(files[2])


@pytest.mark.skipif(not ra.supported(), reason="no posix_fadvise on this OS")
def test_the_real_advice_runs_on_a_real_file(tmp_path, monkeypatch):
    monkeypatch.setattr(ra, "CHUNK", 1 << 20)
    files = _files(tmp_path, {"a": 10})
    big = tmp_path / "b"
    with open(big, "wb") as f:
        f.truncate(3 << 19)  # 1.5 MiB, sparse: two chunks
    files.append(big)
    calls = []

    def spy(fd, offset, length):
        calls.append((offset, length))
        ra._fadvise_willneed(fd, offset, length)  # the real call: a wrong argument raises here

    r = ra.Readahead(files, advise=spy)
    r._target = big
    r._warm(big)  # in this thread, so an error is not swallowed by a thread
    assert calls == [(0, 1 << 20), (1 << 20, 1 << 19)]
    fd = os.open(big, os.O_RDONLY)
    try:
        ra._fadvise_willneed(fd, 0, 1 << 20)
    finally:
        os.close(fd)


@needs_proc
def test_a_run_warms_each_stage_file_after_the_one_before_it(tmp_path, monkeypatch):
    """generate at 256 px with the bundled model: every stage file but the first is warmed, in load order."""
    import torch

    from unclip_cli import options
    from unclip_cli.pipeline import cascade, images, stages as stages_mod

    monkeypatch.setenv("UNCLIP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    warmed = []

    def advise(fd, offset, length):
        if offset == 0:
            warmed.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)

    st, size = stages_mod.open_model("shapes", "cpu", torch.float32, 256)
    st.readahead._advise = advise
    opts = options.resolve(st.spec.defaults, {"decoder_steps": 2, "prior_steps": 2, "sr_steps": 2}, size)
    cascade.generate(st, ["a red circle"], opts, [torch.Generator().manual_seed(3)])
    _join(st.readahead)
    order = [st.paths[s].name for s in stages_mod.LOAD_ORDER if s in st.paths]
    assert warmed == order[1:], (warmed, order)


@pytest.mark.parametrize("value", [None, "", "0", "false", "off", "no", " OFF "])
def test_readahead_is_off_unless_asked_for(tmp_path, monkeypatch, value):
    if value is None:
        monkeypatch.delenv("UNCLIP_READAHEAD", raising=False)
    else:
        monkeypatch.setenv("UNCLIP_READAHEAD", value)
    files = _files(tmp_path, {"a": 10, "b": 10})
    r = ra.Readahead(files)
    r.loaded([files[0]])
    assert r.threads == []


@pytest.mark.skipif(not ra.supported(), reason="no posix_fadvise on this OS")
@pytest.mark.parametrize("value", ["1", "true", " On ", "yes"])
def test_unclip_readahead_1_turns_it_on(tmp_path, monkeypatch, value):
    monkeypatch.setenv("UNCLIP_READAHEAD", value)
    files = _files(tmp_path, {"a": 10, "b": 10})
    r = ra.Readahead(files)
    r.loaded([files[0]])
    _join(r)
    assert len(r.threads) == 1
