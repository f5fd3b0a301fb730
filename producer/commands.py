"""Handlers of the job commands: submit, status, wait, results, cancel, retry, jobs."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from producer import monitor
from producer.submit import Client, resume, retry, submit
from shared.errors import ConfigError
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
    return _wait(client, job, args.strict) if args.wait else 0


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
    hint = monitor.stuck_reason(client.jobs, args.job, settings.visibility_timeout + 60)
    if hint:
        print(hint)
    if fields.get("stalled"):
        print(f"{fields['stalled']} chunk(s) could not write their part; last error: "
              f"{fields.get('last_error')}. Fix it, then send them again with "
              f"`rstream resume {args.job}`.")
    return 0


def wait_command(args: argparse.Namespace, settings: Settings) -> int:
    return _wait(Client(settings), args.job, args.strict)


def _wait(client: Client, job: str, strict: bool) -> int:
    final = monitor.wait(client.jobs, client.storage, job, show_progress=True)
    fields = final.fields
    print(f"job {job}: {fields['status']}, {fields['ok']} ok, {fields['failed']} failed",
          file=sys.stderr)
    if final.stalled:
        print(f"job {job}: {fields['stalled']} chunk(s) could not write their part "
              f"({fields.get('last_error')}); see `rstream status {job}`", file=sys.stderr)
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
        f = job.fields
        created = datetime.fromtimestamp(float(f["created_at"]), UTC).strftime("%Y-%m-%d %H:%M")
        print(f"{job.id}\t{f['status']}\t{job.processed}/{f['images']}\t{f['failed']} failed"
              f"\t{created}\t{f['model']}")
    return 0


def train_command(args: argparse.Namespace, settings: Settings) -> int:
    import uuid

    from shared.constants import FINETUNE_TASK, TRAIN_QUEUE
    from shared.training import TrainRuns

    client = Client(settings)
    run = f"train-{uuid.uuid4().hex[:12]}"
    options = {k: v for k, v in {"name": args.name, "mode": args.mode, "epochs": args.epochs,
                                 "start": args.start, "force": args.force or None}.items()
               if v is not None}
    if args.set:
        options["overrides"] = _training_options(args.set)
    runs = TrainRuns(client.jobs.redis)
    runs.update(run, status="queued", name=args.name or settings.train_model)
    client.app.send_task(FINETUNE_TASK, kwargs=options, queue=TRAIN_QUEUE, task_id=run)
    print(run)
    if not args.wait:
        return 0
    outcome = monitor.wait_training(runs, run, show_progress=True)
    _print_json(outcome)
    return 0 if outcome.get("status") in ("promoted", "trained", "skipped") else 1


def _training_options(pairs: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` pairs as training options; a VALUE that is not JSON is plain text.

    The trainer checks the keys (it knows the training config; this side has no torch).
    """
    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r} is invalid: use KEY=VALUE, e.g. --set resize=36")
        try:
            options[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.strip()] = raw
    return options


def models_ls_command(args: argparse.Namespace, settings: Settings) -> int:
    from shared.registry import Registry

    registry = Registry(Client(settings).storage, settings.models)
    for name in [args.name] if args.name else registry.names():
        pointer, _ = registry.read_pointer(name)
        production = pointer["version"] if pointer else None
        for version in registry.versions(name):
            meta = registry.read_meta(name, version)
            accuracy = meta.get("metrics", {}).get("val_accuracy")
            shown = "-" if accuracy is None else f"{accuracy:.4f}"
            mark = "*" if version == production else " "
            print(f"{mark} {name}@{version}\t{meta.get('arch')}\t{len(meta.get('classes', []))} "
                  f"classes\tval_acc {shown}\t{meta.get('gate', {}).get('reason', '')}")
    return 0


def models_promote_command(args: argparse.Namespace, settings: Settings) -> int:
    from shared.registry import Registry

    name, _, version = args.ref.partition("@")
    if not version:
        raise ConfigError(f"{args.ref!r}: give NAME@VERSION (see `rstream models ls {name}`)")
    registry = Registry(Client(settings).storage, settings.models)
    pointer = registry.promote(name, version, reason="promoted by hand")
    print(f"{name}: production is now {pointer['version']}")
    return 0


def models_rollback_command(args: argparse.Namespace, settings: Settings) -> int:
    from shared.registry import Registry

    registry = Registry(Client(settings).storage, settings.models)
    pointer = registry.rollback(args.name)
    print(f"{args.name}: production is back to {pointer['version']}")
    return 0
