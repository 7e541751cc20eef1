"""What `make demo` prints after scoring examples/: the worklist beside the examples' labels.

    python examples/report.py demo/examples
"""

from __future__ import annotations

import csv
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(out: Path) -> None:
    labels = {row["file"]: row for row in csv.DictReader(open(HERE / "labels.csv"))}
    rows = list(csv.DictReader(open(out / "worklist.csv")))
    print(f"{'rank':>4}  {'level':<12} {'P(abn)':>6}  {'boxes from':<10}  {'truth':<30} file")
    counts: Counter[tuple[str, str]] = Counter()
    for row in rows:
        rel = Path(row["file"]).resolve().relative_to(HERE).as_posix()
        truth = labels.get(rel, {}).get("label", "?")
        probability = f"{float(row['probability']):.3f}" if row["probability"] else "-"
        print(f"{row['rank']:>4}  {row['level']:<12} {probability:>6}  {row['boxes_from'] or '-':<10}  "
              f"{truth:<30} {rel}")
        counts[("normal" if truth == "normal" else "abnormal", row["level"])] += 1
    for truth in ("abnormal", "normal"):
        n = sum(v for (t, _), v in counts.items() if t == truth)
        shown = ", ".join(f"{counts[(truth, level)]} {level}" for level in ("likely", "suspected", "normal",
                                                                               "out_of_scope") if counts[(truth, level)])
        print(f"{truth} examples ({n}): {shown}")
    print(f"worklist: {out / 'worklist.csv'}; overlays: {out / 'overlays'}/; every record: {out / 'predictions.jsonl'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
