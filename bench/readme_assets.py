"""Copy the demo's main table and one figure into docs/ for the README (`make readme-assets`).

The heatmap image is the first ``results/figures/*heatmap*.png`` when the synthetic cohort has produced one,
otherwise the Li et al. hard-negative figure of the demo."""

import shutil
import sys
from pathlib import Path

from PIL import Image

root = Path(__file__).resolve().parents[1]
table = root / "results/tables/li2019_table2.md"
figs = sorted((root / "results/figures").glob("*heatmap*.png")) or [root / "results/figures/li2019_mined.png"]
missing = [str(p) for p in (table, figs[0]) if not p.exists()]
if missing:
    sys.exit(f"run the demo first (make demo): missing {missing}")
shutil.copyfile(table, root / "docs/demo_table.md")
img = Image.open(figs[0])
img.thumbnail((1200, 1200))  # keep the committed PNG small
img.save(root / "docs/demo_figure.png", optimize=True)
print(f"docs/demo_table.md <- {table}\ndocs/demo_figure.png <- {figs[0]}")
