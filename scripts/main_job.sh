#!/usr/bin/env bash
# The main job (`make demo`): on the bundled synthetic "shapes" dataset (generated on first use),
#   1. evaluate the untrained model (random weights) for a baseline PQ,
#   2. train the quick-start config and evaluate it (PQ/SQ/RQ, mask AP, mIoU),
#   3. write panoptic PNG + JSON + a visualisation for a few validation images,
#   4. print the untrained and trained PQ side by side.
# Uses the GPU when one is present. Extra arguments are passed to train_net.py as config overrides.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${VENV:-$ROOT/.venv}/bin/python
CFG=configs/quick_start/panoptic_fpn_ext_R_18_shapes.yaml
OUT=${OUTPUT_DIR:-output/quick_start}
DEVICE=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
echo "main job: device $DEVICE, output in $OUT"

# --eval-only writes to OUTPUT_DIR/eval_<weights stem>/: here $OUT/untrained/eval_random_weights/.
"$PY" train_net.py --config-file "$CFG" --eval-only --allow-random-weights \
    MODEL.DEVICE "$DEVICE" OUTPUT_DIR "$OUT/untrained" "$@"
"$PY" train_net.py --config-file "$CFG" MODEL.DEVICE "$DEVICE" OUTPUT_DIR "$OUT" "$@"
"$PY" -m panoptic_fpn_ext.tools.predict --config-file "$CFG" --limit 6 --overwrite \
    --input "${DETECTRON2_DATASETS:-datasets}/panoptic_fpn_ext_shapes/val" \
    --output "$OUT/predictions" --opts MODEL.DEVICE "$DEVICE" MODEL.WEIGHTS "$OUT/model_final.pth"
"$PY" -m panoptic_fpn_ext.tools.summary "$OUT/untrained/eval_random_weights/eval_results.json" \
    "$OUT/eval_results.json"
