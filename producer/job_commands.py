"""Handlers of the job commands: submit, status, wait, results, cancel, retry, resume, jobs."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from producer import monitor
from producer.submit import Client, resume, retry, submit
from shared import deadletters
from shared.jobs import DONE
from shared.results import job_prefix
from shared.settings import Settings


def submit_command(args: argparse.Namespace, settings: Settings) -> int:
    client = Client(settings)
    source = args.source
    job = submit(source, job=args.job, model=args.model, chunk_size=args.chunk_size,
                 client=client)
    print(job)
    return _wait(client, job, args.strict) if args.wait else 0


def status_command(args: argparse.Namespace, settings: Settings) -> int:
    client = Client(settings)
    state = monitor.status(client.jobs, args.job)
    if args.json:
        print(json.dumps(state.as_dict(), indent=2, default=str))
        return 0
    job = state.job
    eta = "-" if state.eta_s is None else f"{state.eta_s:.0f} s"
    print(f"job {args.job}: {job.status}  {job.processed}/{job.images} images "
          f"({job.ok} ok, {job.failed} failed)  {state.rate:.1f} img/s  ETA {eta}")
    print(f"model {job.model}  results {job_prefix(job.results, args.job)}/")
    hint = monitor.stuck_reason(client.jobs, args.job, settings.visibility_timeout + 60)
    if hint:
        print(hint)
    if job.stalled_chunks:
        print(f"{job.stalled_chunks} chunk(s) could not write their part; last error: "
              f"{job.last_error}. Fix it, then send them again with "
              f"`rstream resume {args.job}`.")
    return 0


def wait_command(args: argparse.Namespace, settings: Settings) -> int:
    return _wait(Client(settings), args.job, args.strict)


def _wait(client: Client, job: str, strict: bool) -> int:
    final = monitor.wait(client.jobs, client.storage, job, show_progress=True)
    print(f"job {job}: {final.status}, {final.ok} ok, {final.failed} failed", file=sys.stderr)
    if final.stalled:
        print(f"job {job}: {final.stalled_chunks} chunk(s) could not write their part "
              f"({final.last_error}); see `rstream status {job}`", file=sys.stderr)
    if final.status != DONE:
        return 1
    return 1 if strict and final.failed else 0


def results_command(args: argparse.Namespace, settings: Settings) -> int:
    client = Client(settings)
    for line in monitor.results(client.jobs, client.storage, args.job,
                                failed_only=args.failed):
        print(json.dumps(line, ensure_ascii=False))
    return 0


def cancel_command(args: argparse.Namespace, settings: Settings) -> int:
    job = Client(settings).jobs.cancel(args.job)
    print(f"job {args.job}: {job.status}")
    return 0


def resume_command(args: argparse.Namespace, settings: Settings) -> int:
    client = Client(settings)
    sent = resume(args.job, client=client)
    print(f"job {args.job}: sent {sent} chunk(s) that were not done")
    return _wait(client, args.job, args.strict) if args.wait else 0


def retry_command(args: argparse.Namespace, settings: Settings) -> int:
    client = Client(settings)
    count = retry(args.job, client=client)
    print(f"job {args.job}: resubmitted {count} failed images")
    return _wait(client, args.job, args.strict) if args.wait else 0


def jobs_command(args: argparse.Namespace, settings: Settings) -> int:
    for job in Client(settings).jobs.recent(args.limit):
        created = datetime.fromtimestamp(job.created_at, UTC).strftime("%Y-%m-%d %H:%M")
        print(f"{job.id}\t{job.status}\t{job.processed}/{job.images}\t{job.failed} failed"
              f"\t{created}\t{job.model}")
    return 0


def dead_letters_command(args: argparse.Namespace, settings: Settings) -> int:
    client = Client(settings).jobs.redis
    entries = deadletters.recent(client, args.limit)
    for entry in entries:
        if args.json:
            print(json.dumps(entry))
            continue
        when = datetime.fromtimestamp(float(entry["at"]), UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{when}\tqueue={entry.get('queue')}\ttask={entry.get('task')}\t"
              f"{entry['raw_bytes']} bytes\t{entry['reason']}")
    total = deadletters.count(client)
    if args.clear:
        print(f"cleared {deadletters.clear(client)} dead letter(s)", file=sys.stderr)
    elif total > len(entries):
        print(f"({total} in all; --limit N shows more)", file=sys.stderr)
    return 0
