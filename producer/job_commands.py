"""Handlers of the job commands: submit, status, wait, results, cancel, retry, resume, jobs."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from tqdm import tqdm

from producer import monitor
from producer.submit import Client, Sent, resume, retry, submit_counted
from shared import deadletters
from shared.errors import RstreamError
from shared.jobs import DONE, FAILED, RUNNING, check_job_id, new_job_id
from shared.results import job_prefix
from shared.settings import Settings


def submit_command(args: argparse.Namespace, settings: Settings) -> int:
    client = Client(settings)
    job = check_job_id(args.job or new_job_id())
    print(job, flush=True)  # first: a script can follow the job while it is being sent
    bars: list[tqdm] = []  # made at the first chunk sent: a refused submission shows none

    def progress(sent: Sent) -> None:
        if not bars:
            bars.append(_bar("submitting"))
        bars[0].set_postfix(chunks=sent.chunks, recorded=sent.listed_images, refresh=False)
        bars[0].update(sent.images - bars[0].n)

    try:
        sent = submit_counted(args.source, job=job, model=args.model,
                              chunk_size=args.chunk_size, client=client, progress=progress)
    except KeyboardInterrupt:
        print(f"rstream: interrupted: {_continue_hint(client, job)}", file=sys.stderr)
        return 130
    except RstreamError as exc:
        hint = _continue_hint(client, job) if client.jobs.exists(job) else ""
        print(f"rstream: error: {exc}" + (f" ({hint})" if hint else ""), file=sys.stderr)
        return 2
    finally:
        for bar in bars:
            bar.close()
    for note in sent.notes:
        print(note, file=sys.stderr)
    print(f"job {job}: sent {sent.chunks} chunk(s), {sent.images} images", file=sys.stderr)
    if args.wait:
        return _wait(client, job, args.strict)
    record = client.jobs.get(job)
    if sent.stopped or record.status == FAILED:
        print(f"rstream: {sent.stopped or f'job {job} failed as a whole: {record.last_error}'}",
              file=sys.stderr)
        return 1
    return 0


def _bar(desc: str) -> tqdm:
    # Off a terminal (CI logs, files) the bar prints a line every 10 s instead of redrawing.
    return tqdm(desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True,
                mininterval=0.2 if sys.stderr.isatty() else 10.0)


def _continue_hint(client: Client, job: str) -> str:
    if not client.jobs.exists(job):
        return f"nothing was recorded for job {job}"
    record = client.jobs.get(job)
    if record.status != RUNNING:
        return f"job {job} is {record.status}: see `rstream status {job}`"
    return (f"job {job} keeps its {record.listed_images} recorded images; run the same "
            f"command again, or `rstream resume {job}`, to continue")


def status_command(args: argparse.Namespace, settings: Settings) -> int:
    client = Client(settings)
    if args.job is None:
        from producer.watch_commands import print_watches

        return print_watches(client, args.json)
    state = monitor.status(client.jobs, args.job)
    if args.json:
        print(json.dumps(state.as_dict(), indent=2, default=str))
        return 0
    job = state.job
    eta = "-" if state.eta_s is None else f"{state.eta_s:.0f} s"
    total = f"{job.images}+" if job.submitting else f"{job.images}"
    print(f"job {args.job}: {job.status}  {job.processed}/{total} images "
          f"({job.ok} ok, {job.failed} failed)  {state.rate:.1f} img/s  ETA {eta}")
    print(f"model {job.model}  results {job_prefix(job.results, args.job)}/")
    for line in monitor.notes(client.jobs, job, settings.visibility_timeout):
        print(line)
    return 0


def wait_command(args: argparse.Namespace, settings: Settings) -> int:
    return _wait(Client(settings), args.job, args.strict)


def _wait(client: Client, job: str, strict: bool) -> int:
    final = monitor.wait(client.jobs, client.storage, job, show_progress=True)
    print(f"job {job}: {final.status}, {final.ok} ok, {final.failed} failed", file=sys.stderr)
    if final.status == FAILED:
        print(f"job {job}: failed as a whole: {final.last_error}", file=sys.stderr)
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
    for note in sent.notes:
        print(note, file=sys.stderr)
    print(f"job {args.job}: sent {sent.chunks} chunk(s) that were not done")
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
