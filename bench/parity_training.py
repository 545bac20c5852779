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
import sys
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
def two_sample(a: np.ndarray, b: np.ndarray, n_perm: int = 20_000, seed: int = 0) -> dict:
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(seed)
    pooled, k = np.concatenate([a, b]), len(a)
    obs = abs(a.mean() - b.mean())
    perms = (rng.permutation(pooled) for _ in range(n_perm))
    hits = sum(abs(p[:k].mean() - p[k:].mean()) >= obs - 1e-12 for p in perms)
    return {"mann_whitney_p": float(mannwhitneyu(a, b).pvalue), "permutation_p": (hits + 1) / (n_perm + 1),
            "mean_diff": float(a.mean() - b.mean())}


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
        from parity_training_runs import distributions  # the long mode lives beside this file

        distributions(ref, args, rest, two_sample)


if __name__ == "__main__":
    main()
