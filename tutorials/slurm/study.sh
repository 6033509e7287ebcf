#!/usr/bin/env bash
# Tutorial: a study (2 arms x 2 seeds) with every run a Slurm job through submitit, then the same study on this
# machine: the two reports hold the same numbers; a rerun submits nothing. Needs a Slurm cluster (CI starts a
# one-node one: tests/slurm_cluster.py) and the study extra (pip install 'prism-seg[study]').
# Run from the repository root: bash tutorials/slurm/study.sh
#   PARTITION    the Slurm partition (default short)
#   SLURM_FLAGS  per-run resources (default: "--slurm-gpus 0 --slurm-cpus 1 --slurm-time 10", CI's CPU node;
#                on a GPU cluster e.g. "--slurm-gpus 1 --slurm-cpus 8 --slurm-time 600")
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "$PWD/study-XXXXXX")"       # the jobs read and write here: a folder every node sees
trap 'rm -rf "$work"' EXIT
cd "$work"
cp "$here/study/tiny.yaml" .
partition="${PARTITION:-short}"
read -r -a flags <<< "${SLURM_FLAGS:---slurm-gpus 0 --slurm-cpus 1 --slurm-time 10}"

# --8<-- [start:submit]
prism-study run tiny.yaml -o cluster --executor submitit --slurm-partition "$partition" "${flags[@]}"
prism-study status cluster                   # every run: state, step, job id, log
# --8<-- [end:submit]

# --8<-- [start:rerun]
prism-study run tiny.yaml -o cluster --executor submitit --slurm-partition "$partition" "${flags[@]}" | tee rerun.log
# --8<-- [end:rerun]
grep -q "4 finished, 0 to resume, 0 to start" rerun.log
if grep -q "submitted" rerun.log; then echo "the rerun submitted a job"; exit 1; fi

prism-study run tiny.yaml -o local > /dev/null   # the same study on this machine
python - <<'PY'
import json

def numbers(study):
    report = json.load(open(f"{study}/report.json"))
    for run in report["runs"]:
        run.pop("folder")  # the only field naming the study folder
    return report

assert numbers("cluster") == numbers("local"), "the Slurm study's report differs from the local one"
print("Slurm and local reports: the same numbers")
PY
echo "slurm study: ok"
