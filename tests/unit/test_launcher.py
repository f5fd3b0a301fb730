"""rstream worker: which processes it starts, with which devices, and that it restarts them."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rstream.shared.errors import ConfigError
from rstream.worker.runtime.launcher import parse_gpus, plan
from tests.settings import make_settings


def test_without_gpus_one_cpu_worker_sees_no_cuda() -> None:
    [(command, env)] = plan(make_settings(concurrency=3), gpus=[], cpu=False)
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["RSTREAM_DEVICE"] == "cpu"
    assert command[command.index("-Q") + 1] == "infer"
    assert command[command.index("-c") + 1] == "3"
    assert command[command.index("--pool") + 1] == "threads"


def test_one_process_per_gpu_each_seeing_only_its_own() -> None:
    procs = plan(make_settings(), gpus=["0", "1"], cpu=False)
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in procs] == ["0", "1"]
    assert {env["RSTREAM_DEVICE"] for _, env in procs} == {"cuda"}
    names = [command[command.index("-n") + 1] for command, _ in procs]
    assert len(set(names)) == 2


def test_on_a_gpu_the_chunks_in_flight_follow_the_device_batch() -> None:
    def concurrency(settings: object, **options: object) -> list[str]:
        return [command[command.index("-c") + 1]
                for command, _ in plan(settings, **options)]  # type: ignore[arg-type]

    big = make_settings(max_batch=256, chunk_size=64, concurrency=2)
    assert concurrency(big, gpus=["0", "1"], cpu=False) == ["8", "8"]  # two batches of 256
    assert concurrency(big, gpus=[], cpu=False) == ["2"], "the CPU keeps RSTREAM_CONCURRENCY"
    assert concurrency(big, gpus=["0"], cpu=False, concurrency=3) == ["3"], "--concurrency wins"
    assert concurrency(big, gpus=["0"], cpu=False, queue="train", one=True) == ["2"]
    assert concurrency(make_settings(max_batch=64, chunk_size=64, concurrency=5),
                       gpus=["0"], cpu=False) == ["5"], "never fewer than RSTREAM_CONCURRENCY"
    assert concurrency(make_settings(max_batch=100, chunk_size=64, concurrency=1),
                       gpus=["0"], cpu=False) == ["4"], "rounded up to whole chunks"


def test_several_processes_per_gpu_and_a_single_trainer() -> None:
    procs = plan(make_settings(), gpus=["0", "1"], cpu=False, per_gpu=2)
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in procs] == ["0", "0", "1", "1"]
    assert len({command[command.index("-n") + 1] for command, _ in procs}) == 4
    trainer = plan(make_settings(), gpus=["0", "1"], cpu=False, queue="train", one=True,
                   concurrency=1, per_gpu=2)
    assert len(trainer) == 1 and trainer[0][0][trainer[0][0].index("-Q") + 1] == "train"


def test_processes_sharing_a_machine_split_its_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    procs = plan(make_settings(), gpus=["0", "1"], cpu=False, per_gpu=2)
    assert {env["OMP_NUM_THREADS"] for _, env in procs} == {"4"}
    [(_, alone)] = plan(make_settings(), gpus=["0"], cpu=False)
    assert "OMP_NUM_THREADS" not in alone, "one process keeps torch's default"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert {env["OMP_NUM_THREADS"] for _, env in plan(
        make_settings(), gpus=["0"], cpu=False, per_gpu=4)} == {"2"}, "the user's value wins"


def test_each_process_gets_its_own_metrics_port() -> None:
    procs = plan(make_settings(metrics_port=9100), gpus=["0", "1"], cpu=False, per_gpu=2)
    assert [env["RSTREAM_METRICS_PORT"] for _, env in procs] == ["9100", "9101", "9102", "9103"]


def test_cpu_flag_wins_over_gpus() -> None:
    [(_, env)] = plan(make_settings(), gpus=["0"], cpu=True)
    assert env["RSTREAM_DEVICE"] == "cpu"


@pytest.mark.parametrize("text", ["", "a", "0,x", "-1"])
def test_bad_gpu_lists_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--gpus"):
        parse_gpus(text)


def test_a_process_that_dies_is_restarted_until_sigterm(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    child = f"open({str(starts)!r}, 'a').write('x'); raise SystemExit(3)"
    script = textwrap.dedent(f"""
        import logging, sys
        logging.basicConfig(level=logging.INFO)
        from rstream.worker.runtime.launcher import Supervisor
        Supervisor.MAX_BACKOFF_S = 0.2
        sys.exit(Supervisor([([sys.executable, "-c", {child!r}], {{}})]).run())
    """)
    supervisor = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE,
                                  text=True)
    deadline = time.monotonic() + 20
    while (not starts.exists() or len(starts.read_text()) < 3) and time.monotonic() < deadline:
        time.sleep(0.1)
    supervisor.send_signal(signal.SIGTERM)
    _, log = supervisor.communicate(timeout=20)
    assert len(starts.read_text()) >= 3, "the dead worker was started again, more than once"
    assert "exited with 3; restarting it" in log


def _supervise(tmp_path: Path, child: str, **knobs: float) -> subprocess.Popen[str]:
    settings = "".join(f"Supervisor.{name} = {value}\n" for name, value in knobs.items())
    script = textwrap.dedent("""
        import logging, sys
        logging.basicConfig(level=logging.INFO)
        from rstream.worker.runtime.launcher import Supervisor
    """) + settings + f"sys.exit(Supervisor([([sys.executable, '-c', {child!r}], {{}})]).run())\n"
    return subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)


def _wait_for_line(process: subprocess.Popen[str], text: str, timeout_s: float = 20) -> str:
    assert process.stderr is not None
    seen = ""
    deadline = time.monotonic() + timeout_s
    while text not in seen and time.monotonic() < deadline:
        seen += process.stderr.readline()
    assert text in seen, seen
    return seen


def test_sigterm_during_a_restart_pause_exits_0_at_once(tmp_path: Path) -> None:
    supervisor = _supervise(tmp_path, "raise SystemExit(3)", FIRST_BACKOFF_S=30.0)
    _wait_for_line(supervisor, "restarting it in 30.0 s")
    stopped = time.monotonic()
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=10) == 0, "the dead process's own status does not count"
    assert time.monotonic() - stopped < 5, "the 30 s pause was cut short"


def test_sigterm_gives_the_worst_status_of_the_warm_shutdowns(tmp_path: Path) -> None:
    child = ("import signal, sys, time\n"
             "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
             "print('up', file=sys.stderr, flush=True)\n"
             "time.sleep(60)\n")
    supervisor = _supervise(tmp_path, child)
    _wait_for_line(supervisor, "up")
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=10) == 0


def test_the_restart_pause_starts_over_after_a_healthy_run(tmp_path: Path) -> None:
    runs_a_while = "import time; time.sleep(0.6); raise SystemExit(3)"
    supervisor = _supervise(tmp_path, runs_a_while, FIRST_BACKOFF_S=0.2, HEALTHY_AFTER_S=0.5)
    log = _wait_for_line(supervisor, "restarting it in", timeout_s=20)
    for _ in range(3):
        log += _wait_for_line(supervisor, "restarting it in", timeout_s=20)
    supervisor.send_signal(signal.SIGTERM)
    supervisor.wait(timeout=10)
    pauses = [line.rsplit("restarting it in ", 1)[1] for line in log.splitlines()
              if "restarting it in" in line]
    assert len(pauses) >= 4 and set(pauses) == {"0.2 s"}, pauses


def test_the_restart_pause_grows_while_the_process_keeps_dying_at_once(tmp_path: Path) -> None:
    supervisor = _supervise(tmp_path, "raise SystemExit(3)", FIRST_BACKOFF_S=0.1,
                            HEALTHY_AFTER_S=60.0)
    log = ""
    for _ in range(3):
        log += _wait_for_line(supervisor, "restarting it in", timeout_s=20)
    supervisor.send_signal(signal.SIGTERM)
    supervisor.wait(timeout=10)
    pauses = [line.rsplit("restarting it in ", 1)[1] for line in log.splitlines()
              if "restarting it in" in line]
    assert pauses[:3] == ["0.1 s", "0.2 s", "0.4 s"], pauses
