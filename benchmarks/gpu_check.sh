#!/usr/bin/env bash
# GPU readiness in one go: every figure the README's GPU section needs, written to one
# file. Under 5 minutes on a CUDA machine (each section has its own time limit).
#
#   bash benchmarks/gpu_check.sh                        # CUDA -> results/benchmarks/gpu-check.txt
#   bash benchmarks/gpu_check.sh --device cpu --quick OUT   # the dry path (tests/test_gpu_check.py)
#
# Sections: the CUDA test subset (tests named *cuda*; they skip without a GPU),
# overhead.py, losses.py, step_profile.py, seeds.py, and the README's main job
# (mnist, ce / focal / label smoothing, 2 seeds) in fp32 and with --bf16. --quick runs the
# same sections with tiny settings. A failing section is recorded and the rest still run;
# the exit status is 1 if any failed. Run it from an activated environment (or set PYTHON).

set -u
root="$(cd "$(dirname "$0")/.." && pwd)"
device=cuda quick=0 out="$root/results/benchmarks/gpu-check.txt"
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device="$2"; shift 2 ;;
        --device=*) device="${1#*=}"; shift ;;
        --quick) quick=1; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) out="$1"; shift ;;
    esac
done
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac  # OUT is relative to the caller's folder
cd "$root"
py="${PYTHON:-python}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$(dirname "$out")"
: >"$out"
failed=0

# section NAME LIMIT_S COMMAND...: run it (within LIMIT_S and the time left of the whole
# check), append its output and status to $out
section() {
    local name="$1" limit="$2" start=$SECONDS rc
    shift 2
    [ $limit -gt $((deadline - SECONDS)) ] && limit=$((deadline - SECONDS))
    { echo; echo "== $name"; echo "\$ $*"; } >>"$out"
    if [ $limit -le 0 ]; then
        failed=1
        echo "-- $name: FAILED (not run: the check's ${total} s were used up)" >>"$out"
    else
        timeout "$limit" "$@" >>"$out" 2>&1
        rc=$?
        if [ $rc -eq 0 ]; then
            echo "-- $name: ok ($((SECONDS - start)) s)" >>"$out"
        else
            failed=1
            echo "-- $name: FAILED (exit $rc$([ $rc -eq 124 ] && echo ", over ${limit} s"), $((SECONDS - start)) s)" >>"$out"
        fi
    fi
    tail -n 1 "$out" >&2
}

# sizes: the full check fits 5 minutes on a GPU; --quick only shows every section works
if [ $quick -eq 1 ]; then
    overhead=(--jobs reg --steps 3 --repeats 1)
    losses=(--only ce --repeats 2 --warmup 1)
    profile=(--jobs reg --steps 2)
    seeds=(--jobs reg --seeds 2 --steps 6 --repeats 1)
    main_job=(--steps 4 --eval-every 2)
    total=240 limits=(60 60 60 60 60 60 60)
else
    overhead=(--repeats 3 --steps 40)
    losses=(--repeats 20)
    profile=(--steps 10)
    seeds=(--jobs reg,mnist,imbalanced,seg --seeds 5 --steps 200 --repeats 2)
    main_job=()
    total=290 limits=(60 70 50 40 50 45 45)
fi
deadline=$((SECONDS + total))

{
    echo "gpu_check: device $device$([ $quick -eq 1 ] && echo ', quick (tiny settings)')"
    echo "date $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total \
        --format=csv,noheader
    "$py" -c 'import torch; c = torch.cuda.is_available(); print(f"torch {torch.__version__}, \
cuda {torch.version.cuda}, available {c}" + (f", {torch.cuda.get_device_name()}" if c else ""))'
} >>"$out" 2>&1

# the files that define tests named *cuda* (they skip without a GPU)
mapfile -t cuda_tests < <(grep -l -E 'def test_[A-Za-z0-9_]*cuda' tests/test_*.py)
section "CUDA tests" "${limits[0]}" "$py" -m pytest -q -p no:cacheprovider -rs -k cuda \
    "${cuda_tests[@]}"
section "overhead" "${limits[1]}" "$py" benchmarks/overhead.py --device "$device" "${overhead[@]}"
section "losses" "${limits[2]}" "$py" benchmarks/losses.py --device "$device" "${losses[@]}"
section "step profile" "${limits[3]}" "$py" benchmarks/step_profile.py --device "$device" \
    "${profile[@]}"
section "seeds" "${limits[4]}" "$py" benchmarks/seeds.py --device "$device" "${seeds[@]}"
main=(-m losscli train --task mnist --loss ce --loss focal:gamma=2
      --loss label_smoothing:epsilon=0.1 --seeds 2 --device "$device" --quiet "${main_job[@]}")
section "main job" "${limits[5]}" "$py" "${main[@]}" --out "$tmp/main"
if [ "$device" = cpu ]; then
    { echo; echo "== main job --bf16"; echo "-- main job --bf16: skipped (bf16 autocast needs CUDA)"; } >>"$out"
else
    section "main job --bf16" "${limits[6]}" "$py" "${main[@]}" --bf16 --out "$tmp/main-bf16"
fi
echo >>"$out"
echo "gpu_check: $([ $failed -eq 0 ] && echo 'all sections ok' || echo 'some sections FAILED'), ${SECONDS} s" >>"$out"
echo "wrote $out" >&2
exit $failed
