"""Copy the demo's main table and one figure into docs/ for the README (`make readme-assets`).

The image is the demo's MHIM Fig. 7 heatmap (``results/figures/synthetic_heatmap.png``, config figure
``synthetic_heatmap``), else any other ``results/figures/*heatmap*.png``, otherwise the Li et al. hard-negative
figure of the demo."""

import sys
from pathlib import Path

from PIL import Image

root = Path(__file__).resolve().parents[1]
tables = [root / f"results/tables/{name}.md" for name in ("mhim_table2", "li2019_table2")]
preferred = root / "results/figures/synthetic_heatmap.png"
figs = ([preferred] if preferred.exists() else sorted((root / "results/figures").glob("*heatmap*.png"))
        or [root / "results/figures/li2019_mined.png"])
missing = [str(p) for p in (*tables, figs[0]) if not p.exists()]
if missing:
    sys.exit(f"run the demo first (make demo): missing {missing}")
(root / "docs").mkdir(exist_ok=True)
(root / "docs/demo_table.md").write_text("\n\n".join(t.read_text().strip() for t in tables) + "\n")
img = Image.open(figs[0])
img.thumbnail((1200, 1200))  # keep the committed PNG small
img.save(root / "docs/demo_figure.png", optimize=True)
print(f"docs/demo_table.md <- {[str(t) for t in tables]}\ndocs/demo_figure.png <- {figs[0]}")
