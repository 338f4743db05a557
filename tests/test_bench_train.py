"""benchmarks/bench_train.py: the timing loop is fair (every provider warmed up before any is
timed, rounds interleaved with a rotating first provider) and bad flags are errors naming them."""
import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import bench_train  # noqa: E402


@pytest.fixture
def fake_steps(monkeypatch):
    """make_step replaced by closures that log which provider ran (no model is built)."""
    log = []

    def make_step(provider, **kw):
        def step():
            log.append(provider)
        return step

    monkeypatch.setattr(bench_train, "make_step", make_step)
    return log


def test_time_steps_warms_up_every_provider_then_interleaves(fake_steps):
    res = bench_train.time_steps(["fused", "eager", "compile"], rounds=3)
    assert fake_steps[:6] == ["fused", "fused", "eager", "eager", "compile", "compile"]
    assert fake_steps[6:] == ["fused", "eager", "compile", "eager", "compile", "fused", "compile", "fused", "eager"]
    assert set(res) == {"fused", "eager", "compile"}
    for r in res.values():
        assert r["wall"] >= r["wall_min"] >= 0 and r["cpu"] >= 0


def test_time_step_one_provider(fake_steps):
    assert bench_train.time_step("eager", rounds=2) >= 0
    assert fake_steps == ["eager"] * 4


@pytest.mark.parametrize("providers", [["fsed"], [], ["fused", "Eager"]])
def test_time_steps_rejects_unknown_providers(fake_steps, providers):
    with pytest.raises(ValueError, match="providers"):
        bench_train.time_steps(providers)
    assert fake_steps == []


@pytest.mark.parametrize("argv, flag", [(["--providers", "fsed"], "--providers"), (["--providers", ","], "--providers"),
                                        (["--rounds", "0"], "--rounds"), (["--threads", "0"], "--threads")])
def test_main_bad_flags_name_the_flag(fake_steps, capsys, argv, flag):
    with pytest.raises(SystemExit) as e:
        bench_train.main(argv + ["--no-memory"])
    assert e.value.code == 2
    assert flag in capsys.readouterr().err
    assert fake_steps == []   # nothing ran (before: an unknown provider silently ran the fused step)


def test_main_prints_cpu_time_and_speedups(fake_steps, capsys):
    assert bench_train.main(["--providers", "fused,eager", "--rounds", "1", "--no-memory"]) == 0
    out = capsys.readouterr().out
    assert "load average" in out and "CPU" in out and "fused speed-up over eager" in out


def test_load_note():
    assert bench_train.load_note(0.5, 2, 2, wall=1.0, cpu=1.9) == ""
    assert "load average 3.0 on 2 cores" in bench_train.load_note(3.0, 2, 2, wall=1.0, cpu=1.9)
    assert "CPU/wall 0.50" in bench_train.load_note(0.5, 2, 2, wall=2.0, cpu=1.0)
    assert bench_train.load_note(0.5, 1, 2, wall=2.0, cpu=1.0) == ""   # one thread: CPU < wall says little


def test_main_runs_real_small_step(capsys):
    threads = torch.get_num_threads()
    try:
        assert bench_train.main(["--size", "128", "--batch", "1", "--rounds", "1", "--providers", "fused,eager",
                                 "--threads", "1", "--no-memory"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "1 threads" in out and "fused " in out and "eager " in out
