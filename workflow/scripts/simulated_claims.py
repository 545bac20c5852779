"""Adapter: every claims run + the regimes' ground truth -> results/tables/<claims.name>.{md,tsv}, the localisation
table and the forest plot (hardmil.report.claims)."""

from hardmil.report.claims import claims_records, write_claims
from hardmil.utils import rule_log

p, out = snakemake.params, snakemake.output
with rule_log(snakemake.log[0]):
    c = p.claims
    deltas, locs = claims_records(c, p.jobs, p.classes, features=p.features, truth_files=p.truth)
    seeds = sorted({r["seed"] for m in next(iter(p.jobs.values())).values() for r in m})
    folds = sorted({r["fold"] for m in next(iter(p.jobs.values())).values() for r in m})
    note = (f"Protocol `{c['protocol']}` (a validation share of the development bags selects the epoch; the test "
            f"bags are used once). {len(folds)} folds x {len(seeds)} seeds: fold k trains on the development bags "
            "outside development fold k and tests on test fold k, so every test bag is predicted once per seed. "
            "AUC: of each seed's pooled out-of-fold predictions, averaged over seeds. Δ: paired over identical test "
            "bags (hardmil.eval.stats.paired_delta: bootstrap of bags within class, a bag's predictions under "
            "every seed together). "
            "Generator and regimes: docs/benchmark.md.")
    write_claims(deltas, locs, md=out.md, tsv=out.tsv, localisation_tsv=out.localisation, forest=out.forest,
                 title=c["title"], note=note, level=c["level"], resolve=c["resolve"], fail_below=c["fail_below"])
