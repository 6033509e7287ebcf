#!/usr/bin/env bash
# Tutorial: a study (arms x seeds as ordinary runs, then a report with paired intervals). Run from the repository
# root: bash tutorials/study.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
cp "$here/study/tiny.yaml" .

# --8<-- [start:run]
prism-study run tiny.yaml -o study           # 2 arms x 2 seeds, then study/report.md, report.json, plots
ls study study/runs/distill
# --8<-- [end:run]

# --8<-- [start:rerun]
prism-study run tiny.yaml -o study           # again: every run is finished, nothing is trained
prism-study report study                     # rewrite the report from the runs' files
# --8<-- [end:rerun]
test -f study/report.md
test -f study/runs/baseline/seed-1/eval.json
echo "study: ok"
