"""Recipe parity with the MHIM-MIL authors' trainer (DearCaat/MHIM-MIL, run from a checkout outside this repository).

The reference has no licence, so none of its code ships here: this script imports its modules from the checkout
whose path you pass and drives its own training code. Two modes:

``fixture``: the trajectory fixtures of ``tests/test_recipe.py`` (``tests/data/parity/trajectory_*.pt`` and
``selection.pt``). From the same initial weights, the same bag order (the project's (seed, epoch) order, handed to
the reference as its loader), dropout off and, for MHIM-v2, the reference's masks recorded step by step, the
reference's ``BaseTrainer.train`` (``engines/base_engine.py``) runs with the optimiser, scheduler, criterion and
GradScaler its ``train_utils.build_train`` makes; the per-step losses, the learning rate of each epoch and the final
weights (renamed to this project's keys) are saved. Cases: AB-MIL (the standalone ``DAttention``) and MHIM-v2 over
the reference's internal ``attn`` baseline (GRN on, class-aware score, consistency loss, teacher EMA). The
selection fixture drives the reference's ``EarlyStopping`` and its save-on-strict-improvement rule (``main.py:338``)
over scripted selection scores with ties.

``distributions``: trains the reference (``main.py``, one fold per process, matched flags) and this project
(``hardmil.train.run.run_fold``) on the same folds of a ``source: simulated`` regime over several seeds, prints per run
both test AUCs, each side's rate of runs ending below AUC 0.6, and a two-sample test (Mann-Whitney U, and a
permutation test of the mean) of the two AUC distributions; ``--out`` writes them as TSV.

    python bench/parity_training.py fixture --reference /path/to/MHIM-MIL --deps DIR --out tests/data/parity
    python bench/parity_training.py distributions --reference /path/to/MHIM-MIL --deps DIR \\
        --store results/stores/sim_plain/provided --splits results/splits/sim_plain/clean/seed0.tsv ...

``--deps``: folders put on ``sys.path`` for the reference's imports (``timm``, ``torchmetrics``,
``lightning-utilities``, ``einops``, ``future``, installed with ``pip install --target``; stub ``wandb``, ``git``
and, with this machine's CPU wheel, ``torchvision``). docs/recipe.md gives the results and the commands.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import subprocess
import sys
import time
import types
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from parity_mhim import ABMIL_ATTN_MAP, rename  # noqa: E402

STANDALONE_MAP = [("feature.", "feature."), ("attention.0.", "attn_v."), ("attention.2.", "attn_w."),
                  ("classifier.", "classifier.")]
GRN_MAP = [("merge.norm.", "grn.norm."), ("merge.attn.to_q.", "grn.to_q."), ("merge.attn.to_kv.", "grn.to_kv."),
           ("merge.attn.to_out.0.", "grn.out.0."), ("merge.global_q_mm", "grn.queries")]
# the recipe both sides train with in the trajectory fixtures (the reference's flags)
RECIPE = {"lr": 5e-4, "weight_decay": 1e-5, "epochs": 4, "min_lr": 1e-7, "run_epochs": 2}
MHIM_V2 = {"mask_high": 0.2, "rsm_ratio": 0.2, "grn_tokens": 2, "alpha": 0.5, "grn_momentum": 0.9, "momentum": 0.9}


def import_reference(root: Path, deps: list[Path]):
    for d in reversed(deps):
        sys.path.insert(0, str(d))
    sys.path.insert(0, str(root))
    for name in ("modules", "engines"):  # not their __init__: they import every model and the datasets
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(root / name)]
        sys.modules[name] = pkg
    mod = importlib.import_module
    return types.SimpleNamespace(base_engine=mod("engines.base_engine"), common_mil=mod("engines.common_mil"),
                                 train_utils=mod("train_utils"), utils=mod("utils"), abmil=mod("modules.abmil"),
                                 mhim=mod("modules.mhim"))


def toy_bags(n_bags: int = 10, dim: int = 12, seed: int = 0) -> list[tuple[torch.Tensor, int]]:
    """Small bags with a few witnesses in the positive ones (raw scale: features are not standardised)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n_bags):
        n = int(torch.randint(20, 60, (1,), generator=g))
        x = 2.0 + torch.randn(n, dim, generator=g)
        y = i % 2
        if y:
            x[: max(2, n // 10), :3] += 2.5
        out.append((x[torch.randperm(n, generator=g)], y))
    return out


def project_order(seed: int, epoch: int, n: int) -> list[int]:
    """The bag order of ``hardmil.train.loop.train`` in this epoch (its (seed, epoch) generator)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()


def reference_args(**over) -> Namespace:
    base = dict(opt="adam", lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"], lr_sche="cosine",
                num_epoch=RECIPE["epochs"], warmup_lr=1e-6, warmup_epochs=0, early_stopping=True, patient=20,
                max_epoch=100, loss="ce", distributed=False, lr_supi=False, accumulation_steps=1, prefetch=False,
                patch_shuffle=False, amp=False, main_alpha=1.0, aux_alpha=0.0, clip_grad=None, debug=False,
                model="abmil", baseline="attn", tea_type="none", mm=0.9997, log_iter=10_000, rank=0, wandb=False,
                fold_curr=0)
    base.update(over)
    return Namespace(**base)


def no_dropout(model: torch.nn.Module) -> torch.nn.Module:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def reference_trajectory(ref, model, model_ema, args, bags, seed: int, record_masks) -> dict:
    """Train ``model`` with the reference's own trainer for ``RECIPE['run_epochs']`` epochs."""
    trainer = ref.base_engine.BaseTrainer(engine=ref.common_mil.CommonMIL(args), args=args)
    others = {"mm_sche": None}
    criterion, optimizer, scheduler, _ = ref.train_utils.build_train(args, model, None)
    losses, lrs, orders = [], [], []
    ce = criterion

    def recording(logits, y):
        value = ce(logits, y)
        losses.append({"ce": float(value.detach())})
        return value

    scaler = torch.amp.GradScaler(device="cpu", enabled=True)
    for epoch in range(RECIPE["run_epochs"]):
        order = project_order(seed, epoch, len(bags))
        orders.append(order)
        loader = [{"input": bags[i][0][None], "target": torch.tensor([bags[i][1]])} for i in order]
        lrs.append(optimizer.param_groups[0]["lr"])
        trainer.train(args, model, model_ema, loader, optimizer, torch.device("cpu"), torch.autocast, recording,
                      scaler, scheduler, epoch, others)
    out = {"losses": torch.tensor([s["ce"] for s in losses]), "lrs": torch.tensor(lrs),
           "lr_after": optimizer.param_groups[0]["lr"], "orders": torch.tensor(orders)}
    if record_masks is not None:
        out.update(record_masks())
    return out


def abmil_case(ref, seed: int) -> dict:
    torch.manual_seed(seed)
    bags = toy_bags(seed=seed)
    dim = bags[0][0].shape[1]
    model = ref.abmil.DAttention(input_dim=dim, n_classes=2, dropout=0.0, act="gelu", inner_dim=32)
    init = rename(model.state_dict(), STANDALONE_MAP)
    traj = reference_trajectory(ref, model, None, reference_args(model="abmil"), bags, seed, None)
    return {"config": {"in_dim": dim, "n_classes": 2, "hidden_dim": 32, "act": "gelu", "dropout": 0.0},
            "recipe": RECIPE, "seed": seed, "bags": [b[0] for b in bags], "labels": torch.tensor([b[1] for b in bags]),
            "init": init, "final": rename(model.state_dict(), STANDALONE_MAP), **traj}


def mhim_case(ref, seed: int) -> dict:
    """MHIM-v2 over the reference's internal attn baseline; the teacher starts from other weights (a 'baseline')."""
    torch.manual_seed(seed)
    bags = toy_bags(seed=seed)
    dim = bags[0][0].shape[1]
    p = MHIM_V2
    kw = dict(input_dim=dim, mlp_dim=32, n_classes=2, act="gelu", baseline="attn", da_act="relu", attn2score=True,
              dropout=0.0, temp_t=0.1, mask_ratio_h=p["mask_high"], mask_ratio_hr=1.0, merge_enable=True,
              merge_k=p["grn_tokens"], merge_mm=p["grn_momentum"], merge_ratio=1 - p["rsm_ratio"], head=8)
    model = no_dropout(ref.mhim.MHIM(**kw))
    teacher_src = no_dropout(ref.mhim.MHIM(**kw))  # the "trained baseline": other weights of the same model
    model_ema = copy.deepcopy(model)
    model_ema.load_state_dict(teacher_src.state_dict())
    model_ema.merge_test = False

    def student_sd(m):
        return rename({k: v for k, v in m.state_dict().items() if not k.startswith("merge.")}, ABMIL_ATTN_MAP)

    def ours(student, teacher):
        """Our MHIM state dict: the student, the teacher and the GRN (its queries [K, D]; the reference's unused
        ``global_q`` parameter has no counterpart)."""
        grn = rename({k: v for k, v in student.state_dict().items()
                      if k.startswith("merge.") and k != "merge.global_q"}, GRN_MAP)
        grn["grn.queries"] = grn["grn.queries"][0]
        return {**{f"student.{k}": v for k, v in student_sd(student).items()},
                **{f"teacher.{k}": v for k, v in student_sd(teacher).items()}, **grn}

    init = ours(model, model_ema)
    records: list[dict] = []
    real_get_mask, real_masking = model.get_mask, model.merge.masking

    def get_mask(ps, i, attn):
        len_keep, ids = real_get_mask(ps, i, attn)
        records.append({"high_kept": ids[0, :len_keep].clone()})
        return len_keep, ids

    def masking(x, attn):
        state = torch.get_rng_state()
        keep, masked = real_masking(x, attn)
        after = torch.get_rng_state()
        torch.set_rng_state(state)  # the same draw again, to learn which rows it took
        shuffle = torch.argsort(torch.rand(x.shape[1], device=x.device), dim=0)
        assert torch.equal(torch.get_rng_state(), after)
        high = records[-1]["high_kept"]
        records[-1]["kept"] = high[shuffle[: keep.shape[1]]]
        records[-1]["recycled"] = high[shuffle[keep.shape[1]:]]
        return keep, masked

    model.get_mask, model.merge.masking = get_mask, masking
    args = reference_args(model="mhim", aux_alpha=p["alpha"], mm=p["momentum"])
    aux = []
    real_forward_loss = model.forward_loss

    def forward_loss(**kw):
        value = real_forward_loss(**kw)
        aux.append(float(value.detach()))
        return value

    model.forward_loss = forward_loss
    traj = reference_trajectory(ref, model, model_ema, args, bags, seed,
                                lambda: {"kept": [r["kept"] for r in records],
                                         "recycled": [r["recycled"] for r in records]})
    traj["consistency"] = torch.tensor(aux)
    final = ours(model, model_ema)
    cfg = {"in_dim": dim, "n_classes": 2, "baseline": "abmil", "version": "v2", "score": "probability",
           "baseline_params": {"hidden_dim": 32, "act": "gelu", "attention_act": "relu", "attention_bias": False,
                               "dropout": 0.0},
           "mask_high": p["mask_high"], "mask_high_random": 1.0, "mask_high_cosine": False,
           "rsm_ratio": p["rsm_ratio"], "grn_tokens": p["grn_tokens"], "grn_dropout": 0.0, "alpha": p["alpha"],
           "grn_momentum": p["grn_momentum"], "momentum": p["momentum"], "teacher_dropout": True}
    return {"config": cfg, "recipe": RECIPE, "seed": seed, "bags": [b[0] for b in bags],
            "labels": torch.tensor([b[1] for b in bags]), "init": init, "final": final, **traj}


def selection_case(ref) -> dict:
    """The reference's kept epoch and stopping epoch over scripted selection AUCs (ties included)."""
    cases = []
    scripts = [[0.5, 0.7, 0.7, 0.6, 0.7, 0.65, 0.6, 0.6, 0.55, 0.5, 0.5, 0.5],
               [0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6],
               [0.5, 0.8, 0.7, 0.8, 0.7, 0.8, 0.7, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6],
               [0.9, 0.5, 0.5, 0.5, 0.5, 0.5, 0.95, 0.5, 0.5, 0.5, 0.5]]
    for scores in scripts:
        for patience, max_epoch in ((2, 3), (3, 1), (1, 5)):
            stopper = ref.utils.EarlyStopping(patience=patience, stop_epoch=max_epoch)
            best, kept, ran = 0.0, None, 0
            args = Namespace(rank=1)  # silences its prints
            stopper.save_checkpoint = lambda *a, **k: None
            for epoch, auc in enumerate(scores):
                ran = epoch + 1
                stopper(args, epoch, -auc, None)
                if auc > best:  # main.py:338: a strict improvement of the selection score saves
                    best, kept = auc, epoch
                if stopper.early_stop:
                    break
            cases.append({"scores": scores, "patience": patience, "max_epoch": max_epoch, "kept_epoch": kept,
                          "epochs_run": ran})
    return {"cases": cases}


# --- distributions -----------------------------------------------------------------------------------------------
REF_COMMON = ["--datasets=call", "--no_prefetch", "--num_workers=0", "--bootstrap_mode=none",
              "-c=./config/feat_cls.yaml", "--n_classes=2"]
# the reference's MHIM-v2 README recipe with h = 0.03 (config/claims.yaml's mhim_v2_abmil)
REF_MHIM = ["--model=mhim", "--baseline=attn", "--attn2score", "--merge_enable", "--merge_mm=0.9999",
            "--aux_alpha=0.5", "--mask_ratio_h=0.03", "--merge_ratio=0.8", "--merge_k=1"]
ATTN = {"act": "gelu", "attention_act": "relu", "attention_bias": False}  # the reference's internal attn baseline
OUR_MHIM = {"baseline": "abmil", "baseline_params": ATTN, "version": "v2", "mask_high": 0.03, "mask_high_random": 1.0,
            "mask_high_cosine": False, "rsm_ratio": 0.2, "grn_tokens": 1, "alpha": 0.5, "grn_momentum": 0.9999,
            "momentum": 0.9997}


def two_sample(a: np.ndarray, b: np.ndarray, n_perm: int = 20_000, seed: int = 0) -> dict:
    """Mann-Whitney U and a permutation test of the difference of means of two AUC samples."""
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(seed)
    pooled, k = np.concatenate([a, b]), len(a)
    obs = abs(a.mean() - b.mean())
    perms = (rng.permutation(pooled) for _ in range(n_perm))
    hits = sum(abs(p[:k].mean() - p[k:].mean()) >= obs - 1e-12 for p in perms)
    return {"mann_whitney_p": float(mannwhitneyu(a, b).pvalue), "permutation_p": (hits + 1) / (n_perm + 1),
            "mean_diff": float(a.mean() - b.mean())}


def prepare(store: Path, splits: Path, folds: list[int], work: Path) -> tuple[int, dict]:
    """The reference's inputs: ``pt_files/<slide>.pt`` and one ``fold_{k}.csv`` (ID, Label, Split) per fold."""
    from hardmil.data.splits import read_splits
    from hardmil.data.store import BagStore

    src = BagStore(store)
    (work / "data" / "pt_files").mkdir(parents=True, exist_ok=True)
    (work / "folds").mkdir(exist_ok=True)
    roles_of = {}
    for k in folds:
        roles = read_splits(splits, k)
        roles_of[k] = roles
        lines = ["ID,Label,Split"]
        for role, rows in roles.items():
            for r in rows:
                lines.append(f"{r['slide']},{int(r['label'] not in ('0', 'negative', 'normal'))},{role}")
                dest = work / "data" / "pt_files" / f"{r['slide']}.pt"
                if not dest.exists():
                    torch.save(torch.from_numpy(np.asarray(src.features(r["slide"]), np.float32)), dest)
        (work / "folds" / f"fold_{k}.csv").write_text("\n".join(lines) + "\n")
    return int(src.dim), roles_of


def run_reference(ref_root: Path, deps: list[Path], work: Path, dim: int, seed: int, fold: int, budget: dict) -> dict:
    """The reference's AB-MIL, its internal attn baseline (mhim_pure) and MHIM-v2 from it, one fold, as processes."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(d) for d in deps), "OMP_NUM_THREADS": "1"}
    out = work / "ref" / f"seed{seed}"
    common = REF_COMMON + [f"--dataset_root={work / 'data'}", f"--csv_path={work / 'folds'}",
                           f"--cv_fold={fold + 1}", f"--fold_start={fold}", f"--input_dim={dim}",
                           f"--lr={budget['lr']}", f"--num_epoch={budget['epochs']}", f"--patient={budget['patience']}",
                           f"--max_epoch={budget['min_epochs'] - 2}", f"--val_ratio={budget['val_ratio']}",
                           f"--seed={seed}", f"--output_path={out}", "--project=parity"]
    runs = {"abmil": ["--model=abmil"], "attn": ["--model=mhim_pure", "--baseline=attn"],
            "mhim_v2": REF_MHIM + [f"--teacher_init={out / 'parity' / 'attn'}"]}
    runs = {k: v for k, v in runs.items() if k in budget["methods"]}
    (out / "parity").mkdir(parents=True, exist_ok=True)
    seconds = {}
    for title, extra in runs.items():
        log = out / "parity" / f"{title}_fold{fold}.log"
        if log.exists() and "Main Model Loaded" in log.read_text():  # finished earlier (resume)
            seconds[title] = float("nan")
            continue
        t0 = time.perf_counter()
        with open(log, "w") as fh:
            rc = subprocess.run([sys.executable, "main.py", *common, f"--title={title}", *extra], cwd=ref_root,
                                env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
        seconds[title] = time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError(f"reference run failed (rc {rc}): {log}")
    return {t: out / "parity" / t / f"fold_{fold}_model_best.pt" for t in runs} | {"seconds": seconds}


def reference_test_auc(ref, ckpt: Path, kind: str, dim: int, bags: list, labels: list) -> tuple[float, int]:
    """The reference model at its kept epoch on the test bags: (AUC, kept epoch)."""
    from sklearn.metrics import roc_auc_score

    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    if kind == "abmil":
        model = ref.abmil.DAttention(input_dim=dim, n_classes=2, dropout=0.25, act="gelu")
    else:  # attn: the internal baseline (mhim_pure, no GRN); mhim_v2: with the GRN (unused at test)
        model = ref.mhim.MHIM(input_dim=dim, n_classes=2, act="gelu", baseline="attn", da_act="relu",
                              attn2score=True, merge_enable=kind == "mhim_v2", merge_k=1, merge_mm=0.9999,
                              merge_ratio=0.8, mask_ratio_h=0.03, temp_t=0.1)
    model.load_state_dict(saved["model"])
    model.eval()
    with torch.no_grad():
        probs = []
        for x in bags:
            logits = model.forward_test(x[None]) if kind != "abmil" else model(x[None])
            probs.append(float(torch.softmax(logits, dim=-1)[0, 1]))
    return float(roc_auc_score(labels, probs)), int(saved["epoch"])


def run_project(store: Path, splits: Path, work: Path, seed: int, fold: int, budget: dict) -> dict:
    """This project's AB-MIL, the internal attn baseline and MHIM-v2 from it (hardmil.train.run.run_fold)."""
    from hardmil.train.run import run_fold

    train_cfg = {"epochs": budget["epochs"], "patience": budget["patience"], "min_epochs": budget["min_epochs"],
                 "lr": budget["lr"], "device": "cpu"}
    kw = dict(splits=splits, features_dir=store, classes=["negative", "positive"], fold=fold, protocol="clean",
              seed=seed, train_cfg=train_cfg, progress=False)
    out = work / "ours" / f"seed{seed}" / f"fold{fold}"
    res = {}
    for name, model, params, teacher in (("abmil", "abmil", {"act": "gelu"}, None),
                                         ("attn", "abmil", ATTN, None),
                                         ("mhim_v2", "mhim", OUR_MHIM, out / "attn" / "model.pt")):
        if name not in budget["methods"]:
            continue
        t0 = time.perf_counter()
        done = out / name / "metrics.json"
        if done.exists():  # finished earlier (resume)
            m, seconds = json.loads(done.read_text()), float("nan")
        else:
            m = run_fold(model=model, model_params=params, out_dir=out / name, teacher=teacher, **kw)
            seconds = time.perf_counter() - t0
        res[name] = {"auc": m["auc"], "epoch": m["selected_epoch"], "seconds": seconds}
    return res


def _task(spec: dict) -> list[dict]:
    """One side's three runs of one (seed, fold); a failure comes back as a row naming it."""
    try:
        return _runs(spec)
    except Exception as err:  # noqa: BLE001 - reported, not hidden: the summary counts error rows
        return [{"side": spec["side"], "method": "error", "seed": spec["seed"], "fold": spec["fold"],
                 "auc": float("nan"), "epoch": -1, "seconds": f"{type(err).__name__}: {err}".replace("\t", " ")}]


def _runs(spec: dict) -> list[dict]:
    torch.set_num_threads(1)
    a = spec["args"]
    rows = []
    if spec["side"] == "ours":
        for method, r in run_project(a.store, a.splits, a.work, spec["seed"], spec["fold"], spec["budget"]).items():
            rows.append({"side": "ours", "method": method, "seed": spec["seed"], "fold": spec["fold"], **r})
        return rows
    ref = import_reference(a.reference, a.deps)
    paths = run_reference(a.reference, a.deps, a.work, spec["dim"], spec["seed"], spec["fold"], spec["budget"])
    test = spec["roles"]["test"]
    bags = [torch.load(a.work / "data" / "pt_files" / f"{r['slide']}.pt", weights_only=True) for r in test]
    labels = [int(r["label"] not in ("0", "negative", "normal")) for r in test]
    for method in spec["budget"]["methods"]:
        auc, epoch = reference_test_auc(ref, paths[method], method, spec["dim"], bags, labels)
        rows.append({"side": "reference", "method": method, "seed": spec["seed"], "fold": spec["fold"], "auc": auc,
                     "epoch": epoch, "seconds": paths["seconds"][method]})
    return rows


def distributions(ref, args, rest: list[str]) -> None:
    import multiprocessing as mp

    ap = argparse.ArgumentParser(prog="parity_training.py distributions")
    ap.add_argument("--store", type=Path, required=True, help="the regime's bag store (results/stores/<d>/provided)")
    ap.add_argument("--splits", type=Path, required=True, help="its splits (results/splits/<d>/clean/seed0.tsv)")
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (both sides' runs)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--min-epochs", type=int, default=8, help="ours; the reference gets --max_epoch = this - 2")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--val-ratio", type=float, default=0.2, help="> 0 so that the reference selects on the val rows")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=["abmil", "attn", "mhim_v2"],
                    help="a subset (mhim_v2 needs attn)")
    extra = ap.parse_args(rest)
    for k, v in vars(extra).items():
        setattr(args, k, v)
    budget = {"epochs": args.epochs, "patience": args.patience, "min_epochs": args.min_epochs, "lr": args.lr,
              "val_ratio": args.val_ratio, "methods": args.methods}
    dim, roles = prepare(args.store, args.splits, args.folds, args.work)
    specs = [{"side": side, "seed": s, "fold": f, "budget": budget, "dim": dim, "roles": roles[f], "args": args}
             for s in args.seeds for f in args.folds for side in ("reference", "ours")]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        rows = [r for chunk in pool.imap_unordered(_task, specs) for r in chunk]
    wall = time.perf_counter() - t0
    rows.sort(key=lambda r: (r["method"], r["seed"], r["fold"], r["side"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    keys = ["side", "method", "seed", "fold", "auc", "epoch", "seconds"]
    args.out.write_text("\t".join(keys) + "\n" + "".join("\t".join(str(r[k]) for k in keys) + "\n" for r in rows))
    print(f"{len(rows)} runs in {wall / 60:.1f} min -> {args.out}")
    for r in rows:
        if r["method"] == "error":
            print(f"FAILED {r['side']} seed {r['seed']} fold {r['fold']}: {r['seconds']}")
    summary = {}
    for method in args.methods:
        a = np.array([r["auc"] for r in rows if r["method"] == method and r["side"] == "reference"])
        b = np.array([r["auc"] for r in rows if r["method"] == method and r["side"] == "ours"])
        test = two_sample(a, b)
        summary[method] = {"reference_mean": float(a.mean()), "ours_mean": float(b.mean()),
                           "reference_below_0.6": int((a < 0.6).sum()), "ours_below_0.6": int((b < 0.6).sum()),
                           "n": [len(a), len(b)], **test}
        print(f"{method:8s} reference {a.mean():.3f} ({(a < 0.6).sum()}/{len(a)} below 0.6)  ours {b.mean():.3f} "
              f"({(b < 0.6).sum()}/{len(b)} below 0.6)  Mann-Whitney p {test['mann_whitney_p']:.3f}  "
              f"permutation p {test['permutation_p']:.3f}")
    args.out.with_suffix(".json").write_text(json.dumps({"budget": budget, "seeds": args.seeds, "folds": args.folds,
                                                         "wall_minutes": wall / 60, "summary": summary}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["fixture", "distributions"])
    ap.add_argument("--reference", type=Path, required=True, help="a checkout of DearCaat/MHIM-MIL")
    ap.add_argument("--deps", type=Path, action="append", default=[], help="extra sys.path folders (repeatable)")
    ap.add_argument("--out", type=Path, required=True)
    args, rest = ap.parse_known_args()
    torch.set_num_threads(1)
    ref = import_reference(args.reference, args.deps)
    if args.mode == "fixture":
        args.out.mkdir(parents=True, exist_ok=True)
        torch.save(abmil_case(ref, seed=3), args.out / "trajectory_abmil.pt")
        torch.save(mhim_case(ref, seed=4), args.out / "trajectory_mhim_v2.pt")
        torch.save(selection_case(ref), args.out / "selection.pt")
        print("wrote", *(args.out / n for n in ("trajectory_abmil.pt", "trajectory_mhim_v2.pt", "selection.pt")))
    else:
        distributions(ref, args, rest)


if __name__ == "__main__":
    main()
