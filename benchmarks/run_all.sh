#!/usr/bin/env bash
# Runs the benchmarks - all but the long ones, or those named (bash benchmarks/run_all.sh reinhard pipeline) - and
# merges what they measured into benchmarks/results.json, then renders benchmarks/RESULTS.md from it.
# Sections not rerun keep their figures, date and machine. Baselines that need other packages get their own
# environment under /tmp, never the project's.
set -euo pipefail
cd "$(dirname "$0")/.."
HISTOFUSE_FIGURES=$(mktemp -d)
export HISTOFUSE_FIGURES
trap 'rm -rf "$HISTOFUSE_FIGURES"' EXIT
TS_ENV=${TS_ENV:-/tmp/torchstain-env}
wanted=" $* "

wants() { [ "$wanted" = "  " ] || [[ "$wanted" == *" $1 "* ]]; }

step() {  # step NAME "TITLE" COMMAND...: the script writes NAME.json; its printed output is kept beside it
    local name=$1 title=$2
    shift 2
    wants "$name" || return 0
    run_step "$name" "$title" "$@"
}

long_step() {  # a step of an hour or more: runs only when named
    [[ "$wanted" == *" $1 "* ]] || return 0
    run_step "$@"
}

run_step() {
    local name=$1 title=$2
    shift 2
    echo "== $name: $title" >&2
    printf '%s' "$title" > "$HISTOFUSE_FIGURES/$name.title"
    HISTOFUSE_FIGURES_AS=$name "$@" | tee "$HISTOFUSE_FIGURES/$name.txt"
    [ -f "$HISTOFUSE_FIGURES/$name.json" ] || { echo "error: $name recorded no figures" >&2; exit 1; }
}

if wants reinhard || wants stain_matrix; then
    if [ ! -x "$TS_ENV/bin/python" ]; then
        python -m venv "$TS_ENV"
        "$TS_ENV/bin/pip" install -q torchstain numpy opencv-python-headless
    fi
fi

step reinhard "Reinhard stain normalization" \
    python benchmarks/reinhard.py --torchstain-python "$TS_ENV/bin/python"
step stain_matrix "Macenko and Vahadane stain normalization" \
    python benchmarks/stain_matrix.py --torchstain-python "$TS_ENV/bin/python"
step pipeline "Training input pipeline and decode cache" python benchmarks/pipeline.py
step model_speed "Model speed: frozen phase, bf16 + channels-last, batched TTA, start-up" python benchmarks/model_speed.py
step overhead "Framework overhead per epoch" python benchmarks/overhead.py
step quickstart "The quick start, as the README runs it" python benchmarks/quickstart.py --keep "$HISTOFUSE_FIGURES/runs"
# The web app serves the quick start's run when it was trained above; otherwise the script trains a tiny one.
trained=$(find "$HISTOFUSE_FIGURES/runs" -mindepth 1 -maxdepth 1 -type d 2>/dev/null | head -n 1 || true)
step serve_load "Web app under load" python benchmarks/serve_load.py $trained --clients 8 --requests 20
step fusions "Fusion heads" python benchmarks/fusions.py
step crossval_cost "Cross-validation cost, quick-start backbones" python benchmarks/crossval_cost.py
step crossval_cost_cnns "Cross-validation cost, ImageNet-sized CNNs" \
    python benchmarks/crossval_cost.py --backbones resnet18 efficientnet_b0
step synthetic_colour "What colour alone achieves on the synthetic data" \
    python benchmarks/synthetic_colour.py --seeds 0 1 2 3 4 5 6 7 8 9
step realdata_folds "One split against 5 folds on the small real BreaKHis set" python benchmarks/realdata_folds.py
step scale_transfer "Transfer across scales: whole images, tiles, tiles at one µm per pixel" \
    python benchmarks/scale_transfer.py --seeds 1 2
step tile_pooling "Pooling tiles where the lesion is focal: the mean against attention" \
    python benchmarks/tile_pooling.py --seeds 0 1 2
step tiles "Tiles: loader throughput and evaluation cost per image" python benchmarks/tiles.py
# The paper's recipe at real sizes on one GPU, within 8 minutes; on a lent device:
#   bash benchmarks/run_all.sh gpu_check && cp benchmarks/results.json benchmarks/RESULTS.md "$OUT"
long_step gpu_check "The paper's recipe at real sizes on one GPU" bash benchmarks/gpu_check.sh
long_step phase_boundaries_real "What each phase keeps of the one before, 53 real BreaKHis images" \
    python benchmarks/phase_boundaries.py --data real --seeds 1 2 3
long_step phase_boundaries_synthetic "What each phase keeps of the one before, synthetic tissue" \
    python benchmarks/phase_boundaries.py --data synthetic --seeds 1 2
step backbone_costs "Foundation-model backbones: parameters, FLOPs, frozen memory" python benchmarks/backbone_costs.py

python benchmarks/collect_results.py "$HISTOFUSE_FIGURES"
