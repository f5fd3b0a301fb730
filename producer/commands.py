"""Handlers of the job commands: submit, status, wait, results, cancel, retry, jobs."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from producer import monitor
from producer.submit import Client, retry, submit
from shared.jobs import DONE
from shared.settings import Settings


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, default=str))


def submit_command(args: argparse.Namespace, settings: Settings) -> int:
    client = Client(settings)
    source = args.source
    job = submit(source, job=args.job, model=args.model, chunk_size=args.chunk_size,
                 client=client)
    print(job)
    if args.wait:
        return _wait(client, job, args.strict)
    return 0


def status_command(args: argparse.Namespace, settings: Settings) -> int:
    client = Client(settings)
    state = monitor.status(client.jobs, args.job)
    if args.json:
        _print_json(state.as_dict())
        return 0
    fields = state.job.fields
    eta = "-" if state.eta_s is None else f"{state.eta_s:.0f} s"
    print(f"job {args.job}: {fields['status']}  {state.job.processed}/{fields['images']} images "
          f"({fields['ok']} ok, {fields['failed']} failed)  {state.rate:.1f} img/s  ETA {eta}")
    print(f"model {fields['model']}  results {fields['results']}/{args.job}/")
    return 0


def wait_command(args: argparse.Namespace, settings: Settings) -> int:
    return _wait(Client(settings), args.job, args.strict)


def _wait(client: Client, job: str, strict: bool) -> int:
    final = monitor.wait(client.jobs, client.storage, job, show_progress=True)
    fields = final.fields
    print(f"job {job}: {fields['status']}, {fields['ok']} ok, {fields['failed']} failed",
          file=sys.stderr)
    if fields["status"] != DONE:
        return 1
    return 1 if strict and int(fields["failed"]) else 0


def results_command(args: argparse.Namespace, settings: Settings) -> int:
    client = Client(settings)
    for line in monitor.results(client.jobs, client.storage, args.job,
                                failed_only=args.failed):
        print(json.dumps(line, ensure_ascii=False))
    return 0


def cancel_command(args: argparse.Namespace, settings: Settings) -> int:
    job = Client(settings).jobs.cancel(args.job)
    print(f"job {args.job}: {job.fields['status']}")
    return 0


def retry_command(args: argparse.Namespace, settings: Settings) -> int:
    client = Client(settings)
    count = retry(args.job, client=client)
    print(f"job {args.job}: resubmitted {count} failed images")
    if args.wait:
        return _wait(client, args.job, args.strict)
    return 0


def jobs_command(args: argparse.Namespace, settings: Settings) -> int:
    for job in Client(settings).jobs.recent(args.limit):
        f = job.fields
        created = datetime.fromtimestamp(float(f["created_at"]), UTC).strftime("%Y-%m-%d %H:%M")
        print(f"{job.id}\t{f['status']}\t{job.processed}/{f['images']}\t{f['failed']} failed"
              f"\t{created}\t{f['model']}")
    return 0
