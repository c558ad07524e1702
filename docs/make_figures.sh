#!/usr/bin/env bash
# Regenerate the figures under docs/ from the two demos (CPU, minutes each):
#   bash docs/make_figures.sh            # runs each demo whose outputs are missing
#   bash docs/make_figures.sh --rerun    # runs both demos again (--overwrite)
# docs/figures/classification_roc.png    the classification demo's test ROC curve
# docs/figures/localization_overlay.png  the localization demo's first test overlay
# Each is shrunk to at most 480 px and saved as a palette PNG, to stay well under 100 KB.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
rerun=()
[[ "${1:-}" == "--rerun" ]] && rerun=(--overwrite)

if [[ ${#rerun[@]} -gt 0 || ! -f outputs/demo/roc.png ]]; then
    "$python" classification_task/train.py --demo "${rerun[@]}"
fi
if [[ ${#rerun[@]} -gt 0 || ! -d outputs/demo_localization/overlays ]]; then
    "$python" localization_task/train.py --demo "${rerun[@]}"
fi

"$python" - <<'PY'
from pathlib import Path

from PIL import Image

MAX_SIDE_PX = 480
overlays = sorted(Path("outputs/demo_localization/overlays").glob("*.png"))
if not overlays:
    raise SystemExit("the localization demo wrote no overlay: rerun with --rerun")
figures = {"classification_roc.png": Path("outputs/demo/roc.png"), "localization_overlay.png": overlays[0]}
out_dir = Path("docs/figures")
out_dir.mkdir(parents=True, exist_ok=True)
for name, source in figures.items():
    with Image.open(source) as image:
        image = image.convert("RGB")
        image.thumbnail((MAX_SIDE_PX, MAX_SIDE_PX), Image.Resampling.LANCZOS)
        image.quantize(colors=128).save(out_dir / name, optimize=True)
    print(f"{out_dir / name}: {(out_dir / name).stat().st_size // 1024} KB, from {source}")
PY
