#!/usr/bin/env bash
# Every GPU measurement that issues 8 (scan) and 10 (train) ask for, in one run: for a GPU
# machine lent for a few minutes. It installs aidetect (and any wheels in .whl/, for packages
# the machine lacks: open_clip_torch, ftfy, wcwidth, c2pa-python, defusedxml, ...) into a
# temporary folder, runs the benchmarks from outside the checkout, and keeps each one's output
# in $OUT (or ./gpu-checks/): gpu_decode_race.txt, scan.txt, scan_compile.txt, train_step.txt, train_resume.txt.
#
#   bash benchmarks/gpu_checks.sh                         # a CUDA machine (estimated ~6 min)
#   GPU_CHECKS_DRY_RUN=1 bash benchmarks/gpu_checks.sh    # the same steps on the CPU, tiny
#
# The wheels, fetched where pip works, for a GPU machine with Python 3.12 and torch (what this
# project's lent H200 has; 29 MB):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl open_clip_torch==3.3.0 ftfy==6.3.1 \
#     wcwidth==0.7.0 defusedxml==0.7.1 c2pa-python==0.38.1 toml==0.10.2 \
#     cryptography==48.0.0 cffi==2.0.0 pycparser==3.0 pillow==13.0.0
#
# A step that fails or runs past its time limit is reported and the next one still runs; the
# exit status is the number of steps that failed.
set -u -o pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$repo/gpu-checks}
mkdir -p "$out"
site=$(mktemp -d)
python=${PYTHON:-python3}

# The wheels are built for the GPU machine's Python; a dry run uses what is installed here.
if [ -z "${GPU_CHECKS_DRY_RUN:-}" ] && compgen -G "$repo/.whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "$repo"/.whl/*.whl || exit 100
fi
if "$python" -m pip install -q --no-deps --no-build-isolation --no-compile --target "$site" \
        "$repo"; then
    export PYTHONPATH=$site
else
    # No build backend there (setuptools >= 69): run the checkout's package, which finds its
    # weights/ beside it (aidetect.presets), rather than lose the machine's minutes.
    echo "== installing aidetect failed: running it from the checkout"
    export PYTHONPATH=$site:$repo
fi
export PYTHONUNBUFFERED=1
cd "$site" || exit 100  # outside the checkout: the installed package and its weights/

if [ -n "${GPU_CHECKS_DRY_RUN:-}" ]; then
    scan=(--device cpu --backbone ViT-B-32 --images 16 --batch-size 8 --compare 4)
    train_step=(--device cpu --backbone ViT-B-32 --steps 1 --decode)
    train_resume=(--device cpu --backbone ViT-B-32 --images 24 --side 224 --batch-size 8
                  --save-every 2)
    race=(--device cpu --iterations 2)
    compile_images=16
    limit=600
else
    race=(--device cuda --iterations 100)
    scan=(--device cuda --backbone ViT-L-14-quickgelu --images 2048 --batch-size 64)
    train_step=(--device cuda --steps 3 --decode)
    train_resume=(--device cuda --epochs 2)
    compile_images=1024
    limit=240
fi

"$python" - <<'EOF' 2>&1 | tee "$out/machine.txt"
import os, platform, torch, aidetect
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
print(f"{gpu}; {platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__}; "
      f"aidetect {aidetect.__version__} from {os.path.dirname(aidetect.__file__)}")
EOF

failed=0
step() {  # step NAME ARGS...: one benchmark, its output on the terminal and in $out/NAME.txt
    local name=$1
    shift
    echo "== $name: $*"
    timeout "$limit" "$python" "$@" 2>&1 | tee "$out/$name.txt"
    local status=${PIPESTATUS[0]}
    if [ "$status" -ne 0 ]; then
        echo "== $name failed (exit $status)" | tee -a "$out/$name.txt"
        failed=$((failed + 1))
    fi
}

step gpu_decode_race "$repo/benchmarks/gpu_decode_race.py" "${race[@]}"
step scan "$repo/benchmarks/scan.py" "${scan[@]}"
step scan_compile "$repo/benchmarks/scan.py" "${scan[@]}" --preprocess patches --compile \
    --images "${compile_images}"
step train_step "$repo/benchmarks/train_step.py" "${train_step[@]}"
step train_resume "$repo/benchmarks/train_resume.py" "${train_resume[@]}"
exit "$failed"
