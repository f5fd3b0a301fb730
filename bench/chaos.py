"""Chaos soak: a job through two workers while worker processes are SIGKILLed and Redis is
killed with -9, over local storage or S3. Nothing may be lost or reported twice, and no run
may need a person to run ``rstream resume``.

    .venv/bin/python -m bench.chaos [--storage local|s3] [--repeats 3] [--images 480]
                                    [--worker-kills 30] [--redis-kills 3] [--out FILE]

Each run: a private ``redis-server`` with the append-only file fsynced on every write (as
docker-compose.yml's Redis keeps one), ``--images`` images (one in ten bad) on local storage
or on moto's S3 server over HTTP, a small registry model, and two real worker processes that
this script restarts as soon as they die (as ``rstream worker`` would). Once the job is
submitted, a worker process is SIGKILLed every ``--kill-every`` seconds until
``--worker-kills``, and Redis is killed with -9 and restarted ``--redis-kills`` times in
between. Then it waits for the job; if it does not finish in ``--deadline`` seconds, it runs
``resume`` and says so. It compares every line with the truth (the same model scored in this
process) and prints JSON: lost, duplicated, wrong, unexpected lines, the manifest against the
truth, whether resume was needed, kills done, and seconds to finish.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from bench.report import emit, machine
from bench.services import moto_server
from rstream.producer import monitor
from rstream.producer.client import Client
from rstream.producer.submit import resume, submit
from rstream.shared.jobs.manifest import manifest_uri
from rstream.shared.models.registry import Registry
from rstream.shared.settings import Settings
from rstream.shared.storage import Storage
from rstream.worker.samples import variants
from tests.pipeline import bad_images
from tests.services import RedisServer, WorkerProcess, publish_random_model


def write_images(storage: Storage, prefix: str, count: int) -> list[str]:
    bad = bad_images()
    uris = []
    for i, (good_name, good_blob) in enumerate(variants(count, seed=11)):
        bad_name, bad_blob = bad[i % len(bad)]
        name, blob = (f"bad-{i:04d}-{bad_name}", bad_blob) if i % 10 == 9 else (good_name,
                                                                              good_blob)
        uri = f"{prefix}{name}"
        storage.write(uri, blob)
        uris.append(uri)
    return uris


def truth(settings: Settings, uris: list[str], model: str) -> dict[str, Any]:
    """What each URI's line must say: the top-1 index, or that it is an error."""
    from rstream.worker.serving.engine import Engine

    storage = Storage(settings)
    with Engine(settings, storage, Registry(storage, settings.models)) as engine:
        lines = engine.score(uris, model)
    return {line["uri"]: (line["top"][0]["index"] if line["ok"] else "error") for line in lines}


class Workers:
    """Two worker processes, restarted at once when they die, killable on demand."""

    def __init__(self, settings: Settings, work: Path) -> None:
        self.settings, self.work = settings, work
        self.procs: list[WorkerProcess] = []
        self.starts = 0
        self.stopping = threading.Event()
        for _ in range(2):
            self.procs.append(self._start(len(self.procs)))
        self._thread = threading.Thread(target=self._supervise, daemon=True)
        self._thread.start()

    def _start(self, slot: int) -> WorkerProcess:
        self.starts += 1
        return WorkerProcess(self.settings, self.work / f"worker-{slot}-{self.starts}.log",
                             f"chaos{slot}-{self.starts}", concurrency=2)

    def _supervise(self) -> None:
        while not self.stopping.wait(0.2):
            for slot, proc in enumerate(self.procs):
                if proc.process.poll() is not None:
                    proc.kill()  # closes its log
                    self.procs[slot] = self._start(slot)

    def kill_one(self, slot: int) -> bool:
        proc = self.procs[slot]
        if proc.process.poll() is None and "ready." in proc.log():
            proc.process.kill()
            return True
        return False

    def stop(self) -> None:
        self.stopping.set()
        self._thread.join()
        for proc in self.procs:
            proc.stop(timeout_s=20)

    def unrecoverable(self) -> int:
        return sum(path.read_text(errors="replace").count("Unrecoverable error")
                   for path in self.work.glob("worker-*.log"))


def one_run(opts: argparse.Namespace, run: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rstream-chaos-") as tmp:
        work = Path(tmp)
        redis = RedisServer(work / "redis", durable=True)
        (work / "redis").mkdir()
        redis.start()
        try:
            with moto_server() if opts.storage == "s3" else nullcontext("") as endpoint:
                return _run(opts, run, work, redis, endpoint)
        finally:
            redis.stop()


def _run(opts: argparse.Namespace, run: int, work: Path, redis: RedisServer,
         endpoint: str) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        "redis_url": redis.url, "storage_root": str(work / "root"), "device": "cpu",
        "chunk_size": opts.chunk_size, "max_batch": 16, "concurrency": 2, "decode_threads": 2,
        "task_time_limit": 10, "visibility_timeout": opts.visibility_timeout,
        "max_pending_chunks": 0}
    prefix = "chaos/"
    if opts.storage == "s3":
        import boto3

        boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1"
                                       ).create_bucket(Bucket="chaos")
        overrides.update(s3_endpoint_url=endpoint, allowed_buckets=("chaos",),
                         results="s3://chaos/results", models="s3://chaos/models")
        prefix = "s3://chaos/images/"
    settings = Settings.from_env({}, **overrides)
    client = Client(settings)
    # 224 px (the real workload): the job outlasts the kills
    model = publish_random_model(settings, "chaos", seed=3, resize=256, crop=224)
    uris = write_images(client.storage, prefix, opts.images)
    expected = truth(settings, uris, model)
    workers = Workers(settings, work)
    started = time.monotonic()
    try:
        job = submit(prefix, model=model, client=client)
        kills, redis_kills = _chaos(opts, workers, redis,
                                    lambda: not client.jobs.get(job).finished)
        needed_resume = False
        try:
            monitor.wait(client.jobs, client.storage, job, show_progress=False,
                         timeout_s=opts.deadline)
        except TimeoutError:
            needed_resume = True
            resume(job, client=client)
            monitor.wait(client.jobs, client.storage, job, show_progress=False,
                         timeout_s=opts.deadline)
        seconds = time.monotonic() - started
        lines = list(monitor.results(client.jobs, client.storage, job))
        manifest = json.loads(client.storage.read(manifest_uri(settings.results, job)))
    finally:
        workers.stop()
    seen = Counter(line["uri"] for line in lines)
    got = {line["uri"]: (line["top"][0]["index"] if line["ok"] else "error") for line in lines}
    bad = sum(1 for value in expected.values() if value == "error")
    return {
        "run": run, "storage": opts.storage, "images": len(uris),
        "lost": sum(1 for uri in uris if uri not in seen),
        "duplicated": sum(1 for n in seen.values() if n > 1),
        "unexpected": sum(1 for uri in seen if uri not in expected),
        "wrong": sum(1 for uri, value in got.items() if uri in expected
                     and value != expected[uri]),
        "manifest_matches_truth": (manifest["images"], manifest["ok"], manifest["failed"]) == (
            len(uris), len(uris) - bad, bad),
        "needed_resume": needed_resume, "worker_kills": kills[0],
        "worker_kills_while_the_job_ran": kills[1], "redis_kills": redis_kills[0],
        "redis_kills_while_the_job_ran": redis_kills[1],
        "worker_starts": workers.starts, "unrecoverable_errors_logged": workers.unrecoverable(),
        "seconds_to_finish": round(seconds, 1),
    }


def _chaos(opts: argparse.Namespace, workers: Workers, redis: RedisServer,
           running: Callable[[], bool]) -> tuple[tuple[int, int], tuple[int, int]]:
    """SIGKILL workers every ``--kill-every`` s and Redis at even spacing among them; the
    kills of each, and how many of them hit while the job still ran."""
    kills = redis_kills = kills_running = redis_running = 0
    redis_at = {round(opts.worker_kills * (i + 1) / (opts.redis_kills + 1))
                for i in range(opts.redis_kills)}
    rng = random.Random(opts.seed)
    attempts = 0
    while kills < opts.worker_kills and attempts < opts.worker_kills * 20:
        attempts += 1
        time.sleep(opts.kill_every)
        during = _safely(running)
        if workers.kill_one(rng.randrange(2)):
            kills += 1
            kills_running += during
            if kills in redis_at:
                redis.kill()
                time.sleep(1.0)
                redis.start()
                redis_kills += 1
                redis_running += during
    return (kills, kills_running), (redis_kills, redis_running)


def _safely(running: Callable[[], bool]) -> bool:
    try:
        return running()
    except Exception:  # Redis is being restarted: it was running a moment ago
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", choices=("local", "s3"), default="local")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=480)
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--worker-kills", type=int, default=30)
    parser.add_argument("--redis-kills", type=int, default=3)
    parser.add_argument("--kill-every", type=float, default=1.0)
    parser.add_argument("--visibility-timeout", type=int, default=15)
    parser.add_argument("--deadline", type=float, default=600.0,
                        help="seconds to wait for the job before resume is run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the JSON here")
    opts = parser.parse_args()
    runs = [one_run(opts, run) for run in range(opts.repeats)]
    report = {"bench": "chaos", "machine": machine(), "settings": vars(opts), "runs": runs,
              "all_complete": all(r["lost"] == r["duplicated"] == r["wrong"] == 0
                                  and r["manifest_matches_truth"] and not r["needed_resume"]
                                  for r in runs),
              "median_seconds_to_finish": statistics.median(r["seconds_to_finish"]
                                                            for r in runs)}
    emit(report, opts.out)


if __name__ == "__main__":
    main()
