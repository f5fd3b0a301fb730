"""Handlers of the job commands: submit, status, wait, results, cancel, retry, resume, jobs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from datetime import UTC, datetime

from tqdm import tqdm

from rstream.producer import monitor
from rstream.producer.cli.args import Commands, positive
from rstream.producer.client import Client
from rstream.producer.export import EXPORT_FORMATS, export
from rstream.producer.submit import Sent, resume, retry, submit_counted
from rstream.shared.errors import RstreamError
from rstream.shared.jobs.results import job_prefix
from rstream.shared.jobs.store import DONE, FAILED, RUNNING, new_job_id
from rstream.shared.names import JOB_ID
from rstream.shared.queue import deadletters
from rstream.shared.settings import Settings
from rstream.shared.tables.reader import FORMATS, from_options


def add_parsers(commands: Commands) -> None:
    """The job commands and their options."""
    p = commands.add_parser("submit", help="submit a folder, a list file or a prefix for "
                            "scoring; prints the job id first")
    p.add_argument("source", help="a folder under RSTREAM_STORAGE_ROOT, s3://bucket/prefix/, "
                   "a list file (.txt/.jsonl/.list/.manifest) of URIs, or a table "
                   "(.csv/.jsonl/.ndjson/.parquet)")
    p.add_argument("--job", help="job id (default: generated); the same id and arguments "
                   "continue the job from its input record")
    p.add_argument("--model", help="model reference (default: RSTREAM_MODEL)")
    p.add_argument("--chunk-size", type=positive, help="images per task (default: "
                   "RSTREAM_CHUNK_SIZE)")
    p.add_argument("--wait", action="store_true", help="then wait for the job with a progress "
                   "bar")
    p.add_argument("--strict", action="store_true", help="with --wait: exit 1 if any image failed")
    p.add_argument("--format", choices=FORMATS, help="read the list file as a table of this "
                   "format (default: by its extension; .jsonl stays a URI list without it)")
    p.add_argument("--uri-column", help="the table's column of image URIs (default: uri)")
    p.add_argument("--keep", metavar="COL,COL", help="table columns to carry into every "
                   "result line of the image, unchanged in type, under \"columns\"")
    p.add_argument("--results-format", choices=("jsonl", "parquet"), help="this job's results "
                   "format (default: RSTREAM_RESULTS_FORMAT)")
    p.set_defaults(handler=submit_command)

    p = commands.add_parser("status", help="a job's counts, rate and ETA, and what it waits "
                            "for; without a job, the watches")
    p.add_argument("job", nargs="?", help="the job id (none: every watch, its lag and open "
                   "windows)")
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    p.set_defaults(handler=status_command)

    p = commands.add_parser("wait", help="wait for a job with a progress bar")
    p.add_argument("job", help="the job id")
    p.add_argument("--strict", action="store_true", help="exit 1 if any image failed")
    p.set_defaults(handler=wait_command)

    p = commands.add_parser("results", help="stream a job's result lines (JSONL), or write "
                            "them as CSV or Parquet")
    p.add_argument("job", help="the job id")
    p.add_argument("--failed", action="store_true", help="only the failed images")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="jsonl", help="jsonl (the "
                   "lines), csv (top-1 and kept columns: no top-k list, no embedding) or "
                   "parquet (the compacted files' schema; needs --out FILE)")
    p.add_argument("--out", default="-", help="the file to write (default: - for stdout; "
                   "with a progress bar on stderr)")
    p.set_defaults(handler=results_command)

    p = commands.add_parser("cancel", help="skip a job's queued chunks (running ones finish)")
    p.add_argument("job", help="the job id")
    p.set_defaults(handler=cancel_command)

    p = commands.add_parser("retry", help="resubmit a finished job's failed images")
    p.add_argument("job", help="the job id")
    p.add_argument("--wait", action="store_true", help="wait for the retry")
    p.add_argument("--strict", action="store_true", help="with --wait: exit 1 if any still fail")
    p.set_defaults(handler=retry_command)

    p = commands.add_parser("resume", help="send again the recorded chunks of a job that are "
                            "not done, and finish a submission that stopped")
    p.add_argument("job", help="the job id")
    p.add_argument("--wait", action="store_true", help="wait for the job")
    p.add_argument("--strict", action="store_true", help="with --wait: exit 1 if any image failed")
    p.set_defaults(handler=resume_command)

    p = commands.add_parser("jobs", help="recent jobs, newest first")
    p.add_argument("--limit", type=positive, default=20, help="how many (default 20)")
    p.set_defaults(handler=jobs_command)

    p = commands.add_parser("dead-letters",
                            help="task messages the workers refused, newest first, with why")
    p.add_argument("--limit", type=positive, default=20, help="how many to show (default 20)")
    p.add_argument("--json", action="store_true", help="one JSON object per line, raw included")
    p.add_argument("--clear", action="store_true", help="delete them all (after showing them)")
    p.set_defaults(handler=dead_letters_command)


def submit_command(args: argparse.Namespace, settings: Settings) -> int:
    if args.results_format:
        settings = dataclasses.replace(settings, results_format=args.results_format)
    client = Client(settings)
    job = JOB_ID.check(args.job or new_job_id())
    print(job, flush=True)  # first: a script can follow the job while it is being sent
    bars: list[tqdm] = []  # made at the first chunk sent: a refused submission shows none

    def progress(sent: Sent) -> None:
        if not bars:
            bars.append(_bar("submitting"))
        bars[0].set_postfix(chunks=sent.chunks, recorded=sent.listed_images, refresh=False)
        bars[0].update(sent.images - bars[0].n)

    try:
        sent = submit_counted(args.source, job=job, model=args.model,
                              chunk_size=args.chunk_size, client=client, progress=progress,
                              table=from_options(args.format, args.uri_column, args.keep))
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
        from rstream.producer.cli.watch import print_watches

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
    if args.format == "parquet" and args.out == "-":
        raise RstreamError("--format parquet needs --out FILE (a Parquet file is not a "
                           "stream)")
    client = Client(settings)
    lines = monitor.results(client.jobs, client.storage, args.job, failed_only=args.failed)
    if args.out == "-" and args.format == "jsonl":  # the plain stream, as before
        for line in lines:
            print(json.dumps(line, ensure_ascii=False))
        return 0
    job = client.jobs.get(args.job)
    with tqdm(lines, total=None if args.failed else job.ok + job.failed, unit="line",
              file=sys.stderr, disable=None) as bar:  # None: off when not a terminal
        count = export(iter(bar), args.format, args.out, args.job, sys.stdout)
    if args.out != "-":
        print(f"{count} lines written to {args.out}", file=sys.stderr)
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
