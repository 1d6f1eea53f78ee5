#!/usr/bin/env bash
# Runs every benchmark and writes benchmarks/RESULTS.md with the machine description.
# Baselines that need other packages get their own environment under /tmp, never the project's.
set -euo pipefail
cd "$(dirname "$0")/.."
TS_ENV=${TS_ENV:-/tmp/torchstain-env}
if [ ! -x "$TS_ENV/bin/python" ]; then
    python -m venv "$TS_ENV"
    "$TS_ENV/bin/pip" install -q torchstain numpy opencv-python-headless
fi
{
    echo "# Benchmark results"
    echo
    echo "Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB;"
    echo "Python $(python -c 'import platform; print(platform.python_version())'), $(python -c 'import cv2, numpy, torch; print(f"OpenCV {cv2.__version__}, NumPy {numpy.__version__}, torch {torch.__version__}")'); $(date -u +%Y-%m-%d)."
    echo
    echo "## Reinhard stain normalization"
    echo
    echo '```'
    python benchmarks/reinhard.py --torchstain-python "$TS_ENV/bin/python"
    echo '```'
    echo
    echo "## Macenko and Vahadane stain normalization"
    echo
    echo '```'
    python benchmarks/stain_matrix.py --torchstain-python "$TS_ENV/bin/python"
    echo '```'
    echo
    echo "## Training input pipeline and decode cache"
    echo
    echo '```'
    python benchmarks/pipeline.py
    echo '```'
    echo
    echo "## Model speed: frozen phase, bf16 + channels-last, batched TTA, start-up"
    echo
    echo '```'
    python benchmarks/model_speed.py
    echo '```'
    echo
    echo "## Framework overhead per epoch"
    echo
    echo '```'
    python benchmarks/overhead.py
    echo '```'
    echo
    echo "## Web app under load"
    echo
    echo '```'
    python benchmarks/serve_load.py --clients 8 --requests 20 2>/dev/null | grep -v "^\[" 
    echo '```'
    echo
    echo "## Fusion heads"
    echo
    echo '```'
    python benchmarks/fusions.py
    echo '```'
    echo
    echo "## Cross-validation cost"
    echo
    echo '```'
    python benchmarks/crossval_cost.py 2>/dev/null
    python benchmarks/crossval_cost.py --backbones resnet18 efficientnet_b0 2>/dev/null
    echo '```'
    echo
    echo "## One split against 5 folds on the small real BreaKHis set"
    echo
    echo '```'
    python benchmarks/realdata_folds.py 2>/dev/null
    echo '```'
    echo
    echo "## Foundation-model backbones: parameters, FLOPs, frozen memory"
    echo
    echo '```'
    python benchmarks/backbone_costs.py 2>/dev/null
    echo '```'
} > benchmarks/RESULTS.md
cat benchmarks/RESULTS.md
