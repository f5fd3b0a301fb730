"""What scripts/demo.sh prints about its results; reads JSON on standard input.

    python scripts/demo_report.py training   < the JSON outcome of `rstream train --wait`
    python scripts/demo_report.py accuracy   < the result lines of `rstream results JOB`

``accuracy`` takes each image's true label from its folder (``.../heldout/{label}/x.png``),
compares it with the top-1 label of its result line, and prints the accuracy over every line
(an error line counts as wrong), then a line for each of the first labels and a few misses,
true label next to predicted.
"""

from __future__ import annotations

import json
import sys
from typing import Any

SHOWN = 4  # labels shown, one line each
MISSES = 2


def training(outcome: dict[str, Any]) -> str:
    return (f"fine-tune {outcome.get('status')}: {outcome.get('name')}@{outcome.get('version')}, "
            f"validation accuracy {float(outcome.get('val_accuracy') or 0):.4f} (best epoch "
            f"{outcome.get('best_epoch')} of {outcome.get('epochs_run')}, "
            f"{float(outcome.get('train_s') or 0):.0f} s); {outcome.get('reason')}")


def accuracy(lines: list[dict[str, Any]]) -> list[str]:
    """The accuracy line, then one line of each of the first few labels and a few misses."""
    right, misses = 0, []
    firsts: dict[str, str] = {}
    for line in lines:
        truth = str(line["uri"]).rsplit("/", 2)[-2]
        top = (line.get("top") or [{}])[0] if line.get("ok") else {}
        row = (f"  {line['uri']}  label {truth}  predicted {top.get('label')} "
               f"(p={float(top.get('prob') or 0):.3f})  {line.get('model')}")
        right += top.get("label") == truth
        if top.get("label") != truth:
            misses.append(row)
        firsts.setdefault(truth, row)
    total = len(lines)
    return [f"accuracy on {total} held-out images: {right / max(total, 1):.4f} "
            f"({right} of {total} right, from the result lines)",
            *list(firsts.values())[:SHOWN], *(["  missed:", *misses[:MISSES]] if misses else [])]


def main() -> int:
    kind = sys.argv[1] if len(sys.argv) > 1 else ""
    if kind == "training":
        sys.stdout.write(training(json.load(sys.stdin)) + "\n")
    elif kind == "accuracy":
        lines = [json.loads(raw) for raw in sys.stdin if raw.strip()]
        sys.stdout.write("\n".join(accuracy(lines)) + "\n")
    else:
        sys.stderr.write(__doc__ or "")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
