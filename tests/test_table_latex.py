"""Every shipped table renders as LaTeX that compiles: a strict escaping check that always runs, and pdflatex
(Debian's texlive-latex-base) when it is installed."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from hardmil.config import load_config, table_versus
from hardmil.report.efficiency import PAPER_UNITS
from hardmil.report.published import METRICS
from hardmil.report.tables import record_delta_metrics, table_spec, tex_escape, to_latex, to_markdown

from .conftest import REPO

CONFIGS = sorted((REPO / "config").glob("*.yaml"))
SCHEMA = REPO / "src/hardmil/schemas/config.schema.yaml"
NASTY = "Δ_50% & #1 {x} ~^ \\ é — ≥ 中 $5 <b>"


def _records(config: dict, name: str) -> tuple[list[dict], str]:
    """Records shaped as aggregate() / efficiency_records() make them, with values everywhere."""
    t = config["tables"][name]
    rows, pub, spread = table_spec(t)
    title = t.get("title", t.get("published") or name)
    out = []
    if t.get("kind") == "efficiency":
        metrics, versus = [p for p, _ in PAPER_UNITS.values()], {}
    else:
        metrics, versus = t.get("metrics") or list(METRICS), table_versus(config, name)
    dm = t.get("delta_metrics") or (["c_index"] if "c_index" in metrics else ["auc", "balanced_accuracy"])
    for k, method in enumerate(t["rows"]):
        for protocol in config["protocols"]:
            label = rows[method]
            rec = {"protocol": protocol, "method": method, "label": label or method, "paper_row": label,
                   "n_runs": 5, "n_repetitions": 1}
            for m in metrics:
                p = pub.get(label, {}).get(m)
                rec.update({f"{m}_mean": 0.5 + 0.01 * k, f"{m}_std": 0.02, f"{m}_se": float("nan"),
                            f"{m}_published": p, f"{m}_published_{spread}": None,
                            f"{m}_diff": None if p is None else 0.5 - p})
            if versus:
                other = versus.get(method)
                rec.update({"versus": other or "", "versus_label": rows.get(other, "") if other else ""})
                for m in dm:
                    rec.update({f"{m}_delta": 0.01 if other else None, f"{m}_delta_lo": -0.02 if other else None,
                                f"{m}_delta_hi": 0.04 if other else None,
                                f"{m}_delta_resolved": bool(k % 2) if other else None})
                rec.update({"delta_bags": 30, "delta_pairs": 5, "delta_level": 0.95, "delta_n_boot": 2000})
            out.append(rec)
    return out, title


def _shipped():
    for path in CONFIGS:
        config = load_config(path, SCHEMA)
        for name in config.get("tables", {}):
            yield path.name, name, config


SHIPPED = list(_shipped())


def strict_check(tex: str) -> None:
    """Fail on anything pdflatex would choke on or print wrongly: non-ASCII, unescaped specials, unbalanced
    braces or math, a row with the wrong number of cells."""
    assert tex.isascii(), [c for c in tex if not c.isascii()]
    ncols = None
    for line in tex.splitlines():
        if line.startswith("%"):
            continue
        body = re.sub(r"\\[\\&%$#_{}]", "", line)  # escaped specials (and \\ row ends)
        for ch in "%#_":
            assert ch not in body, f"unescaped {ch!r} in {line!r}"
        assert body.count("$") % 2 == 0, f"unbalanced math in {line!r}"
        depth = 0
        for ch in body:
            depth += {"{": 1, "}": -1}.get(ch, 0)
            assert depth >= 0, f"unbalanced braces in {line!r}"
        assert depth == 0, f"unbalanced braces in {line!r}"
        outside_math = re.sub(r"\$[^$]*\$", "", body)
        assert "^" not in outside_math and "~" not in outside_math, line
        if m := re.match(r"\\begin\{tabular\}\{([lcr]+)\}", line):
            ncols = len(m.group(1))
        elif line.endswith(r"\\"):
            assert ncols is not None and body.count("&") == ncols - 1, f"{line!r}: expected {ncols} cells"


@pytest.mark.parametrize("config_file, name, config", SHIPPED, ids=[f"{c}:{n}" for c, n, _ in SHIPPED])
def test_every_shipped_table_is_strictly_escaped(config_file, name, config):
    records, title = _records(config, name)
    tex = to_latex(records, title)
    strict_check(tex)
    has_pub = any(r.get(k) is not None for r in records for k in r if k.endswith("_published"))
    assert ("published value in parentheses" in tex) == has_pub
    md = to_markdown(records, title)
    assert "NA" not in md and "(se" not in md  # nothing to say -> nothing printed
    if config["tables"][name].get("kind") != "efficiency":
        assert record_delta_metrics(records) and "Compared with" in md


def test_every_shipped_config_table_declares_a_baseline_row():
    for config_file, name, config in SHIPPED:
        t = config["tables"][name]
        assert t.get("baseline") in t["rows"], f"{config_file}: tables.{name} declares no baseline row"


def test_escaping_of_hostile_text():
    out = tex_escape(NASTY)
    assert out.isascii()
    for raw, escaped in (("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"), ("{", r"\{"), ("$", r"\$"),
                         ("Δ", r"$\Delta$"), ("—", "---"), ("≥", r"$\geq$"), ("é", "e"), ("中", "?")):
        assert escaped in out, raw
    records = [{"protocol": "p_1", "method": "a_b", "label": NASTY, "paper_row": "", "n_runs": 1,
                "n_repetitions": 1, "accuracy_argmax_mean": 0.5, "accuracy_argmax_std": float("nan"),
                "accuracy_argmax_se": float("nan"), "accuracy_argmax_published": None,
                "accuracy_argmax_published_se": None, "accuracy_argmax_diff": None}]
    tex = to_latex(records, NASTY)
    strict_check(tex)
    assert r"Accuracy (argmax)" in tex and "accuracy_argmax" not in tex and "parentheses" not in tex


PREAMBLE = r"""\documentclass{article}
\usepackage[T1]{fontenc}
\IfFileExists{booktabs.sty}{\usepackage{booktabs}}{\newcommand\toprule{\hline}\newcommand\midrule{\hline}%
\newcommand\bottomrule{\hline}}
\begin{document}
"""


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed (apt-get install "
                    "texlive-latex-base); the strict escaping test above still runs")
def test_every_shipped_table_compiles_with_pdflatex(tmp_path):
    seen_titles = set()
    body = []
    for _, name, config in SHIPPED:
        records, title = _records(config, name)
        body += [to_latex(records, title), r"\clearpage"]
        seen_titles.add(title)
    body.append(to_latex([{"protocol": "p_1", "method": "a_b", "label": NASTY, "paper_row": "", "n_runs": 1,
                           "n_repetitions": 1, "auc_mean": 0.5, "auc_std": 0.1, "auc_se": 0.1,
                           "auc_published": None, "auc_published_se": None, "auc_diff": None}], NASTY))
    doc = tmp_path / "tables.tex"
    doc.write_text(PREAMBLE + "\n".join(body) + "\n\\end{document}\n")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    log = (tmp_path / "tables.log").read_text(errors="replace") if (tmp_path / "tables.log").exists() else ""
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "tables.pdf").stat().st_size > 1000
    assert "Missing character" not in log and "Undefined control sequence" not in log
