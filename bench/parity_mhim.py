"""Write the MHIM-MIL parity fixtures of tests/test_parity_mhim.py from the authors' reference code.

Not part of CI: the reference repository (DearCaat/MHIM-MIL) has no licence, so none of its code ships here. This
script imports its modules from a checkout whose path you pass, builds them with small sizes, draws random weights
(every parameter, biases included, so that a bias term that should cancel really would show), maps their state
dicts to this project's names, feeds identical small bags and writes, per case, a plain dict of tensors (our state
dict, the inputs, the reference outputs) that ``torch.load(..., weights_only=True)`` reads. Needs ``einops``
importable besides torch (``pip install --target DIR einops`` and ``--deps DIR``); torchvision is not needed.

    .venv/bin/python bench/parity_mhim.py --reference /path/to/MHIM-MIL --out tests/data/parity [--deps DIR]

Cases (the reference code each compares with, and the setting of ours that must reproduce it):
* ``abmil_standalone``: ``modules/abmil.py:DAttention`` (act gelu, 3 classes) = abmil ``{act: gelu}``.
* ``abmil_attn``: MHIM's internal ``attn`` baseline (``MHIM(baseline='attn', da_act='relu', act='gelu')``):
  logits, bag embedding and the class-aware instance score (``forward_teacher`` with ``attn2score``) = abmil
  ``{act: gelu, attention_act: relu, attention_bias: false}``; 2 and 3 classes.
* ``transmil_standalone``: ``modules/transmil.py:TransMIL`` (3 classes) = transmil defaults.
* ``transmil_selfattn``: MHIM's internal ``selfattn`` baseline: logits, bag embedding and instance score = transmil
  ``{act: gelu, padding: ppeg}``; bags of 30 (PPEG zero-padded to 7 x 7), 64 and 70 instances.
* ``masks``: ``select_mask_fn`` on fixed score vectors: high-score masking (r = 1) and RHSM (r = 0.5, the same
  seed before each call: the reference's randperm over the sorted top-k candidates) for several N and h;
  ``Merge.masking``'s kept count (random score masking) for N = 1..300 and merge_ratio in {0.1, 0.2, 0.7, 0.8, 0.9}.
* ``grn``: ``Merge`` (K = 3 queries, dropout 0): its eval output on a bag and one training-mode merge with the EMA
  of the queries (momentum 0.9).
* ``consistency``: ``SoftTargetCrossEntropy(0.1, 1.0)`` on a bag embedding [1, 32] and on DSMIL's [1, C, 32].
* ``keep_order``: one MHIM-v2 training forward of a TransMIL (selfattn) student with the GRN, every dropout 0: the
  logits after the reference's random keep (kept instances in its random draw's order) = ``keep_order: shuffle``.
* ``dsmil_internal``: MHIM's internal DSMIL (act gelu): 0.5 bag + 0.5 max-instance logits, its bag embedding and
  v2 score = dsmil ``{act: gelu, prediction: mean}``.
* ``v1_masks``: ``MHIM.get_mask`` with the v1 options (random, low, high with r, h / r > 1) on 1-D and per-head
  scores (the head vote), and one v1 TransMIL teacher's per-head attention and mask.
* ``v2_run`` / ``v2_run_dsmil``: two epochs of three bags through the reference's own training loop
  (``engines/base_engine.py``, logging imports stubbed): MHIM-v2 over attn / DSMIL with RHSM and the cosine
  schedules of h and of the teacher momentum, GRN, consistency loss, SGD and the teacher EMA; the start and end
  weights of student, teacher and GRN.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import types
from pathlib import Path

import torch


def import_reference(root: Path, deps: Path | None):
    """The reference's modules, without running ``modules/__init__.py`` (it imports every model and mamba)."""
    if deps is not None:
        sys.path.insert(0, str(deps))
    sys.path.insert(0, str(root))
    pkg = types.ModuleType("modules")
    pkg.__path__ = [str(root / "modules")]
    sys.modules["modules"] = pkg
    try:
        import torchvision  # noqa: F401
    except ImportError:  # only its Resnet class uses torchvision.models
        tv = types.ModuleType("torchvision")
        tv.models = types.ModuleType("torchvision.models")
        sys.modules["torchvision"], sys.modules["torchvision.models"] = tv, tv.models
    import importlib

    return types.SimpleNamespace(
        abmil=importlib.import_module("modules.abmil"),
        transmil=importlib.import_module("modules.transmil"),
        mhim=importlib.import_module("modules.mhim"),
        masking=importlib.import_module("modules.mhim_modules.masking"),
        merge=importlib.import_module("modules.mhim_modules.merge"),
        losses=importlib.import_module("modules.mhim_modules.losses"),
    )


def redraw(model: torch.nn.Module, scale: float = 0.3, seed: int = 1234) -> torch.nn.Module:
    """Every parameter redrawn (biases non-zero), LayerNorm weights near 1; eval mode (dropout off)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(scale * noise)
    return model.eval()


def rename(sd: dict, table: list[tuple[str, str]]) -> dict:
    """Reference state dict -> ours by prefix substitution (first match); unmatched keys are an error."""
    out = {}
    for k, v in sd.items():
        for a, b in table:
            if k.startswith(a):
                out[b + k[len(a):]] = v.clone()
                break
        else:
            raise KeyError(f"no mapping for reference key {k}")
    return out


ABMIL_ATTN_MAP = [("feature.", "feature."), ("online_encoder.attention.attention.0.", "attn_v."),
                  ("online_encoder.attention.attention.2.", "attn_w."), ("predictor.", "classifier.")]


def transmil_map(prefix: str, layer1: str, layer2: str, ppeg: str, norm: str, cls: str, head: str) -> list:
    table = [(f"{prefix}feature.", "feature."), (f"{prefix}{cls}", "cls_token"), (head, "classifier.")]
    for i, layer in enumerate((layer1, layer2)):
        table += [(f"{prefix}{layer}.norm.", f"norms.{i}."), (f"{prefix}{layer}.attn.", f"layers.{i}.")]
    table += [(f"{prefix}{ppeg}.proj.", "ppeg.convs.0."), (f"{prefix}{ppeg}.proj1.", "ppeg.convs.1."),
              (f"{prefix}{ppeg}.proj2.", "ppeg.convs.2."), (f"{prefix}{norm}.", "norm.")]
    return table


@torch.no_grad()
def abmil_cases(ref, d: int, hidden: int) -> dict:
    torch.manual_seed(0)
    out = {}
    m = redraw(ref.abmil.DAttention(input_dim=d, n_classes=3, dropout=True, act="gelu", inner_dim=hidden))
    x = torch.randn(1, 57, d)
    logits, attn = m(x, return_attn=True)
    out["abmil_standalone"] = {
        "config": {"in_dim": d, "n_classes": 3, "hidden_dim": hidden, "act": "gelu"},
        "state_dict": rename(m.state_dict(), [("feature.", "feature."), ("attention.0.", "attn_v."),
                                              ("attention.2.", "attn_w."), ("classifier.", "classifier.")]),
        "x": x, "logits": logits, "attention": attn}
    cases = {}
    for c, n in ((2, 120), (3, 83)):
        m = redraw(ref.mhim.MHIM(input_dim=d, mlp_dim=hidden, n_classes=c, act="gelu", baseline="attn",
                                 da_act="relu", attn2score=True, merge_enable=False))
        x = torch.randn(1, n, d)
        emb, score = m.forward_teacher(x)
        cases[f"c{c}"] = {"x": x, "logits": m.forward_test(x), "embedding": emb, "score": score[0],
                          "state_dict": rename({k: v for k, v in m.state_dict().items()
                                                if not k.startswith("merge.")}, ABMIL_ATTN_MAP),
                          "config": {"in_dim": d, "n_classes": c, "hidden_dim": hidden, "act": "gelu",
                                     "attention_act": "relu", "attention_bias": False}}
    out["abmil_attn"] = cases
    return out


@torch.no_grad()
def transmil_cases(ref, d: int, hidden: int) -> dict:
    torch.manual_seed(1)
    out = {}
    m = redraw(ref.transmil.TransMIL(input_dim=d, n_classes=3, dropout=True, act="relu", inner_dim=hidden,
                                     n_heads=8))
    cfg = {"in_dim": d, "n_classes": 3, "hidden_dim": hidden, "heads": 8, "landmarks": hidden // 2}
    table = transmil_map("", "layer1", "layer2", "pos_layer", "norm", "cls_token", "classifier.")
    bags = {f"n{n}": torch.randn(1, n, d) for n in (45, 70)}
    out["transmil_standalone"] = {"config": cfg, "state_dict": rename(m.state_dict(), table),
                                  "bags": {k: {"x": x, "logits": m(x)} for k, x in bags.items()}}
    cases = {}
    for c in (2, 3):
        m = redraw(ref.mhim.MHIM(input_dim=d, mlp_dim=hidden, n_classes=c, act="gelu", baseline="selfattn",
                                 head=8, attn2score=True, merge_enable=False))
        table = transmil_map("online_encoder.", "layer1", "layer2", "pos_embedding", "norm", "cls_token",
                             "predictor.")
        table[0] = ("feature.", "feature.")
        sd = rename({k: v for k, v in m.state_dict().items() if not k.startswith("merge.")}, table)
        bags = {}
        for n in (30, 64, 70):
            x = torch.randn(1, n, d)
            emb, score = m.forward_teacher(x)
            bags[f"n{n}"] = {"x": x, "logits": m.forward_test(x), "embedding": emb, "score": score[0]}
        cases[f"c{c}"] = {"config": {**cfg, "n_classes": c, "act": "gelu", "padding": "ppeg"}, "state_dict": sd,
                          "bags": bags}
    out["transmil_selfattn"] = cases
    return out


def mask_cases(ref) -> dict:
    g = torch.Generator().manual_seed(7)
    high = []
    for n in (50, 97, 100, 258, 300):
        score = torch.rand(n, generator=g)
        for h in (0.01, 0.03, 0.05, 0.1, 0.3):
            for r in (1.0, 0.5):
                for seed in range(3 if r < 1 else 1):
                    torch.manual_seed(seed)
                    len_keep, ids = ref.masking.select_mask_fn(n, score[None], True, h, len_keep_other=n,
                                                               random_ratio=r)
                    masked = torch.zeros(n, dtype=torch.bool)
                    masked[ids[0, len_keep:]] = True
                    high.append({"score": score, "mask_high": h, "mask_high_random": r, "seed": seed,
                                 "masked": masked})
    keep = {}
    for mr in (0.1, 0.2, 0.7, 0.8, 0.9):
        merge = ref.merge.Merge(4, heads=1, merge_h_dim=4, k=1, g_q_mm=0.9, merge_ratio=mr).train()
        keep[str(mr)] = torch.tensor([merge.masking(torch.zeros(1, n, 4), None)[0].shape[1] for n in range(1, 301)])
    return {"high": high, "rsm_keep": keep}


@torch.no_grad()
def grn_case(ref, hidden: int) -> dict:
    torch.manual_seed(3)
    merge = redraw(ref.merge.Merge(hidden, heads=4, merge_h_dim=8, dropout=0.0, k=3, g_q_mm=0.9, merge_ratio=0.8))
    q0 = merge.global_q_mm.detach().clone()
    x = torch.randn(1, 40, hidden)
    z_eval = merge(x)[0, 40:]
    merge.train()
    masked = torch.randn(1, 25, hidden)
    z_train = merge.merge(masked)[0]
    sd = rename({k: v for k, v in merge.state_dict().items() if not k.startswith("global_q")},
                [("norm.", "norm."), ("attn.to_q.", "to_q."), ("attn.to_kv.", "to_kv."),
                 ("attn.to_out.0.", "out.0.")])
    return {"state_dict": sd, "queries": q0[0], "heads": 4, "head_dim": 8, "momentum": 0.9, "x": x[0],
            "z_eval": z_eval, "masked": masked[0], "z_train": z_train, "queries_after": merge.global_q_mm[0].clone()}


def no_dropout(model: torch.nn.Module) -> torch.nn.Module:
    for mod in model.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    return model


GRN_MAP = [("merge.norm.", "norm."), ("merge.attn.to_q.", "to_q."), ("merge.attn.to_kv.", "to_kv."),
           ("merge.attn.to_out.0.", "out.0.")]


@torch.no_grad()
def keep_order_case(ref, d: int, hidden: int) -> dict:
    """One MHIM-v2 training forward of a TransMIL (selfattn) student: high-score masking (h 0.1, r 1), random score
    masking with the GRN (merge_ratio 0.5, K 1, its 8 x 64 heads), every dropout 0; the reference's seed right
    before the forward, so its only random draw is the random keep (``Merge.masking``: argsort of uniform noise)."""
    torch.manual_seed(5)
    m = no_dropout(redraw(ref.mhim.MHIM(input_dim=d, mlp_dim=hidden, n_classes=2, act="gelu", baseline="selfattn",
                                        head=8, dropout=0.0, mask_ratio_h=0.1, mask_ratio_hr=1.0, attn2score=True,
                                        merge_enable=True, merge_k=1, merge_mm=0.9, merge_ratio=0.5))).train()
    table = transmil_map("online_encoder.", "layer1", "layer2", "pos_embedding", "norm", "cls_token", "predictor.")
    table[0] = ("feature.", "feature.")
    sd = m.state_dict()
    student = rename({k: v for k, v in sd.items() if not k.startswith("merge.")}, table)
    grn = rename({k: v for k, v in sd.items() if k.startswith("merge.") and not k.startswith("merge.global_q")},
                 GRN_MAP)
    grn["queries"] = m.merge.global_q_mm[0].clone()
    q0 = m.merge.global_q_mm.detach().clone()
    bags = {}
    for n, seed in ((40, 0), (64, 1), (90, 2)):
        x = torch.randn(1, n, d)
        m.merge.global_q_mm.copy_(q0)  # every bag starts from the same queries
        _, score = m.forward_teacher(x)
        torch.manual_seed(seed)
        logits, _, _, n_tokens = m(x, score, None, i=0)
        bags[f"n{n}"] = {"x": x, "seed": seed, "logits": logits, "tokens": n_tokens,
                         "queries_after": m.merge.global_q_mm[0].clone()}
    return {"student": student, "grn": grn, "baseline_params": {"act": "gelu", "padding": "ppeg", "dropout": 0.0,
                                                                "attn_dropout": 0.0, "hidden_dim": hidden,
                                                                "heads": 8, "landmarks": hidden // 2},
            "mhim_params": {"mask_high": 0.1, "mask_high_random": 1.0, "mask_high_cosine": False, "rsm_ratio": 0.5,
                            "grn_tokens": 1, "grn_heads": 8, "grn_head_dim": 64, "grn_dropout": 0.0,
                            "grn_momentum": 0.9, "alpha": 0.0, "teacher_dropout": False},
            "in_dim": d, "n_classes": 2, "bags": bags}


DSMIL_MAP = [("feature.0.", "feature.0."), ("online_encoder.i_classifier.0.", "instance_classifier."),
             ("online_encoder.b_classifier.q.", "q."), ("online_encoder.b_classifier.v.", "v."),
             ("online_encoder.b_classifier.fcc.", "fcc.")]


@torch.no_grad()
def dsmil_internal_case(ref, d: int, hidden: int) -> dict:
    """MHIM's internal DSMIL (``baseline='dsmil'``, act gelu, 3 classes): what it predicts and trains on (the engine's
    0.5 bag + 0.5 max-instance logits), its bag embedding B [C, 512] and its v2 instance score."""
    torch.manual_seed(6)
    m = redraw(ref.mhim.MHIM(input_dim=d, mlp_dim=hidden, n_classes=3, act="gelu", baseline="dsmil",
                             attn2score=True, merge_enable=False))
    sd = rename({k: v for k, v in m.state_dict().items() if not k.startswith("predictor.")}, DSMIL_MAP)
    bags = {}
    for n in (25, 60):
        x = torch.randn(1, n, d)
        (bag_logits, max_logits), _ = m.forward_test(x)
        emb, score = m.forward_teacher(x)
        bags[f"n{n}"] = {"x": x, "bag_logits": bag_logits, "max_instance_logits": max_logits,
                         "logits": 0.5 * bag_logits + 0.5 * max_logits, "embedding": emb, "score": score[0]}
    return {"config": {"in_dim": d, "n_classes": 3, "hidden_dim": hidden, "act": "gelu"}, "state_dict": sd,
            "bags": bags}


@torch.no_grad()
def v1_mask_cases(ref, d: int, hidden: int) -> dict:
    """``MHIM.get_mask`` (v1 options: random ``mask_ratio``, low ``mask_ratio_l``, high ``mask_ratio_h`` with
    ``mask_ratio_hr``) on fixed 1-D scores (AB-MIL attention) and on per-head scores [1, H, N] (TransMIL's v1
    layer-1 class-token attention, fused by the reference's head vote); including h / r > 1 (the reference caps).
    Also one v1 TransMIL teacher: its per-head attention on a bag and the masked set from it."""
    g = torch.Generator().manual_seed(8)
    settings = [  # (random, low, high, high random fraction)
        (0.0, 0.0, 0.05, 1.0), (0.0, 0.0, 0.1, 0.5), (0.0, 0.2, 0.1, 1.0), (0.5, 0.0, 0.01, 0.5),
        (0.5, 0.2, 0.01, 0.5), (0.3, 0.0, 0.0, 1.0), (0.0, 0.0, 0.3, 0.2), (0.0, 0.0, 0.6, 0.5)]
    cases = []
    for n, heads in ((37, None), (100, None), (37, 8), (100, 8), (258, 4)):
        score = torch.rand(n, generator=g) if heads is None else torch.rand(heads, n, generator=g)
        attn = score[None]
        for rnd, low, high, hr in settings:
            m = ref.mhim.MHIM(input_dim=4, mlp_dim=8, baseline="attn", merge_enable=False, mask_ratio=rnd,
                              mask_ratio_l=low, mask_ratio_h=high, mask_ratio_hr=hr, head=heads or 8)
            for seed in range(2 if (rnd > 0 or hr < 1 or high / hr > 1) else 1):
                torch.manual_seed(seed)
                len_keep, ids = m.get_mask(n, 0, attn)
                masked = torch.zeros(n, dtype=torch.bool)
                masked[ids[0, len_keep:]] = True
                cases.append({"score": score, "mask_random": rnd, "mask_low": low, "mask_high": high,
                              "mask_high_random": hr, "seed": seed, "masked": masked})
    torch.manual_seed(9)
    m = redraw(ref.mhim.MHIM(input_dim=d, mlp_dim=hidden, n_classes=2, act="gelu", baseline="selfattn", head=8,
                             attn2score=False, merge_enable=False, mask_ratio_h=0.1, mask_ratio_hr=1.0))
    table = transmil_map("online_encoder.", "layer1", "layer2", "pos_embedding", "norm", "cls_token", "predictor.")
    table[0] = ("feature.", "feature.")
    x = torch.randn(1, 70, d)
    _, attn = m.forward_teacher(x)
    len_keep, ids = m.get_mask(70, 0, attn)
    masked = torch.zeros(70, dtype=torch.bool)
    masked[ids[0, len_keep:]] = True
    teacher = {"config": {"in_dim": d, "n_classes": 2, "hidden_dim": hidden, "heads": 8, "landmarks": hidden // 2,
                          "act": "gelu", "padding": "ppeg"},
               "state_dict": rename({k: v for k, v in m.state_dict().items() if not k.startswith("merge.")}, table),
               "x": x, "head_attention": attn[0], "mask_high": 0.1, "masked": masked}
    return {"cases": cases, "transmil": teacher}


def import_trainer(root: Path):
    """The reference's training loop (``engines/base_engine.py:BaseTrainer.train``) and its MHIM glue
    (``engines/common_mil.py``), with the logging-only imports (wandb, timm's meters, git) stubbed."""
    import importlib

    class Meter:  # the interface of timm.utils.AverageMeter that the loop uses
        def __init__(self):
            self.val = self.avg = self.sum = self.count = 0

        def update(self, val, n=1):
            self.val, self.sum, self.count = val, self.sum + val * n, self.count + n
            self.avg = self.sum / self.count

    stubs = {"wandb": {}, "timm": {}, "timm.models": {"model_parameters": lambda m: m.parameters()},
             "timm.utils": {"AverageMeter": Meter, "dispatch_clip_grad": None}, "git": {"Repo": None},
             "engines.metrics": {"get_metric_val": None}}
    for name, attrs in stubs.items():
        mod = sys.modules.setdefault(name, types.ModuleType(name))
        for k, v in attrs.items():
            setattr(mod, k, v)
    pkg = types.ModuleType("engines")
    pkg.__path__ = [str(root / "engines")]
    sys.modules["engines"] = pkg
    return (importlib.import_module("engines.base_engine"), importlib.import_module("engines.common_mil"),
            importlib.import_module("utils"))


def v2_run_case(ref, root: Path, d: int, hidden: int, baseline: str = "attn") -> dict:
    """Two epochs of three bags through the reference's own training loop: MHIM-v2 over its internal AB-MIL
    (``baseline='attn'``, act gelu; or its internal DSMIL, ``'dsmil'``, 3 classes: trained on 0.5 bag + 0.5
    max-instance logits, consistency on the [C, 512] bag embedding), teacher (other weights) scoring with the
    class-aware probability, RHSM (h 0.1, r 0.5) with the per-iteration cosine decay of h (``mrh_sche``), random
    score masking with the GRN (merge_ratio 0.5, K 2, its queries' EMA 0.9), consistency loss (aux_alpha 0.5,
    temp 0.1), an optimiser step, and the teacher's EMA with the cosine momentum schedule (``mm_sche``, 0.99 ->
    1). Every dropout 0, so the only random draws are the masks', under a seed set before each epoch. The
    optimiser is plain SGD, not the reference's Adam: Adam's first steps move every parameter by about lr x
    sign(gradient), so float rounding on a near-zero gradient component would flip whole steps; SGD keeps the
    comparison as well-conditioned as the gradients (the optimiser is PyTorch's, not the reference's code)."""
    base, common, utils = import_trainer(root)
    epochs, seeds, lr, wd = 2, [100, 101], 1e-3, 1e-5
    torch.manual_seed(12)
    bags = [(torch.randn(1, n, d), torch.tensor([y])) for n, y in ((40, 0), (57, 1), (33, 1))]
    mrh = utils.cosine_scheduler(0.1, 0.0, epochs=epochs, niter_per_ep=len(bags))
    mm_sche = utils.cosine_scheduler(0.99, 1.0, epochs=epochs, niter_per_ep=len(bags), start_warmup_value=1.0)
    n_classes = 3 if baseline == "dsmil" else 2
    if baseline == "dsmil":
        bags = [(x, y % 3 + (i == 2)) for i, (x, y) in enumerate(bags)]  # labels 0, 1, 2
    m = no_dropout(redraw(ref.mhim.MHIM(input_dim=d, mlp_dim=hidden, n_classes=n_classes, act="gelu", baseline=baseline,
                                        da_act="relu", dropout=0.0, temp_t=0.1, mask_ratio_h=0.1, mask_ratio_hr=0.5,
                                        mrh_sche=mrh, attn2score=True, merge_enable=True, merge_k=2, merge_mm=0.9,
                                        merge_ratio=0.5)))
    import copy

    tea = no_dropout(redraw(copy.deepcopy(m), seed=4321))

    def student_sd(model):
        if baseline == "dsmil":  # its predictor is built but never used
            return rename({k: v for k, v in model.state_dict().items()
                           if not k.startswith(("merge.", "predictor."))}, DSMIL_MAP)
        return rename({k: v for k, v in model.state_dict().items() if not k.startswith("merge.")}, ABMIL_ATTN_MAP)

    def grn_sd(model):
        sd = model.state_dict()
        out = rename({k: v for k, v in sd.items() if k.startswith("merge.") and not k.startswith("merge.global_q")},
                     GRN_MAP)
        out["queries"] = model.merge.global_q_mm[0].detach().clone()
        return out

    start = {"student": student_sd(m), "teacher": student_sd(tea), "grn": grn_sd(m)}
    args = argparse.Namespace(accumulation_steps=1, distributed=False, prefetch=True, patch_shuffle=False, amp=False,
                              main_alpha=1.0, aux_alpha=0.5, model="mhim", baseline=baseline, debug=False,
                              clip_grad=None, lr_supi=False, tea_type="none", mm=0.99, log_iter=10**9, rank=0,
                              wandb=False, fold_curr=0)
    trainer = base.BaseTrainer(common.CommonMIL(args), args)
    opt = torch.optim.SGD(m.parameters(), lr=lr, weight_decay=wd)
    loader = [{"input": x, "target": y} for x, y in bags]
    losses = []
    for epoch in range(epochs):
        torch.manual_seed(seeds[epoch])
        loss, _, _ = trainer.train(args, m, tea, loader, opt, "cpu", lambda **k: contextlib.nullcontext(),
                                   torch.nn.CrossEntropyLoss(), None, None, epoch, {"mm_sche": mm_sche})
        losses.append(loss)
    return {**start, "bags": [{"x": x, "label": y} for x, y in bags], "epochs": epochs, "seeds": seeds, "lr": lr,
            "weight_decay": wd, "train_loss": torch.tensor(losses),
            "after": {"student": student_sd(m), "teacher": student_sd(tea), "grn": grn_sd(m)},
            "mask_schedule": torch.from_numpy(mrh), "momentum_schedule": torch.from_numpy(mm_sche),
            "in_dim": d, "n_classes": n_classes, "baseline": "dsmil" if baseline == "dsmil" else "abmil",
            "baseline_params": ({"act": "gelu", "prediction": "mean", "dropout": 0.0, "hidden_dim": hidden}
                                if baseline == "dsmil" else
                                {"act": "gelu", "attention_act": "relu", "attention_bias": False, "dropout": 0.0,
                                 "hidden_dim": hidden}),
            "mhim_params": {"mask_high": 0.1, "mask_high_random": 0.5, "mask_high_cosine": True, "rsm_ratio": 0.5,
                            "grn_tokens": 2, "grn_heads": 8, "grn_head_dim": 64, "grn_dropout": 0.0,
                            "grn_momentum": 0.9, "alpha": 0.5, "temp_teacher": 0.1, "momentum": 0.99,
                            "momentum_cosine": True, "teacher_dropout": False}}


def consistency_case(ref) -> dict:
    g = torch.Generator().manual_seed(11)
    loss = ref.losses.SoftTargetCrossEntropy(0.1, 1.0)
    s, t = torch.randn(1, 32, generator=g), torch.randn(1, 32, generator=g)
    s3, t3 = torch.randn(1, 3, 32, generator=g), torch.randn(1, 3, 32, generator=g)
    return {"student": s[0], "teacher": t[0], "loss": loss(s, t), "dsmil_student": s3[0], "dsmil_teacher": t3[0],
            "dsmil_loss": loss(s3, t3), "temp_teacher": 0.1, "temp_student": 1.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", type=Path, required=True, help="a checkout of DearCaat/MHIM-MIL")
    ap.add_argument("--out", type=Path, default=Path("tests/data/parity"))
    ap.add_argument("--deps", type=Path, help="a folder with einops (pip install --target)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ref = import_reference(args.reference.resolve(), args.deps)
    d, hidden = 16, 32
    fixtures = {**abmil_cases(ref, d, hidden), **transmil_cases(ref, d, hidden), "masks": mask_cases(ref),
                "grn": grn_case(ref, hidden), "consistency": consistency_case(ref),
                "keep_order": keep_order_case(ref, d, hidden), "dsmil_internal": dsmil_internal_case(ref, d, hidden),
                "v1_masks": v1_mask_cases(ref, d, hidden),
                "v2_run": v2_run_case(ref, args.reference.resolve(), d, hidden),
                "v2_run_dsmil": v2_run_case(ref, args.reference.resolve(), d, hidden, "dsmil")}
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in fixtures.items():
        path = args.out / f"mhim_{name}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(data, tmp)
        tmp.replace(path)
        print(f"{path}: {path.stat().st_size / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
