"""Write the baseline parity fixtures of tests/data/parity from the reference implementations (run by hand).

    python bench/parity_baselines.py --reference /path/to/MHIM-MIL --dtfd /path/to/DTFD-MIL --out tests/data/parity

The reference repositories carry no licence (MHIM-MIL) or are not part of this project, so none of their code
ships here: this script imports their modules from checkouts whose paths you pass, gives both implementations
the same deterministic weights (``tests/parity_weights.py``; the state dicts are mapped key by key), feeds the
same small bags and saves plain tensors (inputs, the reference's outputs, losses, gradients, the parameters after
one DTFD step) that ``tests/test_parity_baselines.py`` compares against this project's models, in CI, without
the references. The reference needs ``einops`` and ``future`` (MHIM-MIL's ``topk`` package) and, for IBMIL's
k-means, ``faiss-cpu`` (IBMIL's settings on a CPU flat-L2 index instead of its GPU one); ``timm``, ``GitPython``
and tensorboard are stubbed when missing (only names used at import time). The reference packages' ``__init__``
files are not run (they import every model, torchvision included); the modules are loaded one by one. Run it in
a virtual environment with those packages and this project (torch as pinned here).

Covered: CLAM-SB (2 classes; and 3 classes with ``subtyping``) and CLAM-MB (3 classes; logits, attention,
instance loss and its gradients); DSMIL (3 classes; bag and max-instance logits, the cross-entropy and the censored
survival loss of the instance stream); Max-/Mean-MIL (3 classes); gated AB-MIL (``AttentionGated``, act gelu);
R2T-MIL (3 classes; logits, and the large-bag path with 16 R-MSA regions); IBMIL's head (3 classes) and its
confounder k-means (faiss, IBMIL's settings) on a fixed embedding set; the logits of CLAM, DSMIL, Mean-/Max-MIL
and IBMIL with ``act='gelu'`` (the reference's training configs); and one training step of the original
DTFD-MIL (MaxMinS, MaxS and AFS, 3 classes): the gradients each parameter is stepped with and the parameters
after the step.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import io
import random
import sys
import tempfile
import types
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hardmil.models import build_model  # noqa: E402
from tests.parity_weights import fill_weights  # noqa: E402

D = 32  # feature size of the fixtures' bags


def _stub(name: str, **attrs) -> None:
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
        return
    except ImportError:
        pass
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        sub = ".".join(parts[:i])
        sys.modules.setdefault(sub, types.ModuleType(sub))
    for k, v in attrs.items():
        setattr(sys.modules[name], k, v)


def _package(name: str, path: Path) -> None:
    """Register ``path`` as package ``name`` without running its ``__init__`` (which imports everything)."""
    pkg = types.ModuleType(name)
    pkg.__path__ = [str(path)]
    sys.modules[name] = pkg


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def reference_modules(mhim: Path) -> Namespace:
    torch.nn.Module.cuda = lambda self, *a, **k: self  # CLAM's loss is built with .cuda(); run on the CPU
    _stub("timm.models.layers", DropPath=lambda p=0.0: torch.nn.Identity())
    _stub("timm.scheduler", create_scheduler_v2=None)
    _stub("git", Repo=None)
    _stub("torchvision.models")  # modules/abmil.py imports it for an image backbone these fixtures never build
    _package("refmil", mhim / "modules")
    sys.modules.pop("utils", None)
    sys.path.insert(0, str(mhim))
    ns = Namespace(
        clam=importlib.import_module("refmil.clam"),
        dsmil=importlib.import_module("refmil.dsmil"),
        rrt=importlib.import_module("refmil.rrt"),
        ibmil=importlib.import_module("refmil.abmil_ibmil"),
        abmil=importlib.import_module("refmil.abmil"),
        meanmax=importlib.import_module("refmil.mean_max"),
        train_utils=_load(mhim / "train_utils.py", "ref_train_utils"),
    )
    sys.path.remove(str(mhim))
    sys.modules.pop("utils", None)
    return ns


def dtfd_modules(dtfd: Path) -> Namespace:
    _stub("torch.utils.tensorboard", SummaryWriter=None)
    sys.path.insert(0, str(dtfd))
    sys.modules.pop("utils", None)
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        main = _load(dtfd / "Main_DTFD_MIL.py", "ref_dtfd_main")
        ns = Namespace(main=main, attention=sys.modules["Model.Attention"], network=sys.modules["Model.network"])
    finally:
        sys.argv = argv
        sys.path.remove(str(dtfd))
        sys.modules.pop("utils", None)
    return ns


def load_mapped(ref: torch.nn.Module, ours: torch.nn.Module, mapping: dict[str, str]) -> None:
    """Copy ``ours``' tensors into ``ref`` by ``{our key: reference key}``; every reference tensor must be set."""
    theirs = ref.state_dict()
    mine = ours.state_dict()
    missing = [k for k in theirs if k not in mapping.values() and theirs[k].is_floating_point()]
    if missing:
        raise KeyError(f"unmapped reference tensors: {missing}")
    for k, rk in mapping.items():
        if mine[k].shape != theirs[rk].shape:
            raise ValueError(f"{k} {tuple(mine[k].shape)} vs {rk} {tuple(theirs[rk].shape)}")
        theirs[rk] = mine[k].clone()
    ref.load_state_dict(theirs)


def by_position(ref: torch.nn.Module, ours: torch.nn.Module) -> dict[str, str]:
    """Map floating tensors in declaration order (the reference and ours declare them in the same order)."""
    a = [k for k, v in ours.state_dict().items() if v.is_floating_point()]
    b = [k for k, v in ref.state_dict().items() if v.is_floating_point()]
    if len(a) != len(b):
        raise ValueError(f"{len(a)} vs {len(b)} tensors")
    return dict(zip(a, b, strict=True))


def bag(seed: int, n: int) -> torch.Tensor:
    return torch.from_numpy(np.random.Generator(np.random.PCG64(seed)).standard_normal((1, n, D))).float()


def gelu_logits(build, ours: torch.nn.Module, x: torch.Tensor, mapping=None) -> torch.Tensor:
    """Eval logits of the reference model built with ``act='gelu'`` (what its feat_cls / feat_surv configs pass to
    every baseline), given the same weights as ``ours`` (the activation has no parameters)."""
    theirs = build("gelu")
    load_mapped(theirs, ours, by_position(theirs, ours) if mapping is None else mapping)
    with torch.no_grad():
        out = theirs.eval()(x)
    return out[0] if isinstance(out, tuple) else out


def clam_fixture(ref: Namespace, multi: bool, subtyping: bool = False) -> dict:
    name, n_classes, seed = ("clam_mb", 3, 11) if multi else ("clam_sb", 2, 12)
    params = {"in_dim": D, "n_classes": n_classes, "dropout": 0.0}
    if subtyping:  # CLAM-SB, 3 classes, the out-of-class instance loss on
        n_classes, seed, params = 3, 13, {**params, "n_classes": 3, "subtyping": True}
    ours = build_model(name, **params)
    checksum = fill_weights(ours, seed)
    cls = ref.clam.CLAM_MB if multi else ref.clam.CLAM_SB
    theirs = cls(input_dim=D, n_classes=n_classes, dropout=0.0, act="relu", subtyping=subtyping)
    load_mapped(theirs, ours, by_position(theirs, ours))
    x = bag(seed, 90)
    logits_gelu = gelu_logits(lambda act: cls(input_dim=D, n_classes=n_classes, dropout=0.0, act=act), ours, x)
    label = torch.tensor([n_classes - 1])
    theirs.eval()
    with torch.no_grad():
        logits = theirs(x)
        attn = theirs(x, attention_only=True)
    theirs.train()
    theirs.zero_grad()
    _, inst_loss, _ = theirs(x, label=label)
    inst_loss.backward()
    grads = {k: torch.zeros_like(p) if p.grad is None else p.grad.clone()
             for k, p in theirs.instance_classifiers.named_parameters()}
    return {"model": name, "params": params, "seed": seed, "checksum": checksum, "x": x[0], "label": label,
            "logits": logits, "logits_gelu": logits_gelu, "attention": F.softmax(attn.reshape(-1, x.shape[1]), dim=1),
            "instance_loss": inst_loss.detach(), "instance_classifier_grads": grads}


def gabmil_fixture(ref: Namespace) -> dict:
    """The reference's gated AB-MIL (``modules/abmil.py:AttentionGated``, act gelu as its training config): its
    attention dimension is hard-coded to 384, so ours is built with ``attn_dim: 384``."""
    seed, params = 81, {"in_dim": D, "n_classes": 3, "attn_dim": 384, "act": "gelu", "dropout": 0.0}
    ours = build_model("gabmil", **params)
    checksum = fill_weights(ours, seed)
    theirs = ref.abmil.AttentionGated(input_dim=D, n_classes=3, act="gelu", dropout=0.0)
    load_mapped(theirs, ours, by_position(theirs, ours))
    x = bag(seed, 75)
    with torch.no_grad():
        logits = theirs.eval()(x)
    return {"model": "gabmil", "params": params, "seed": seed, "checksum": checksum, "x": x[0], "logits": logits}


def dsmil_fixture(ref: Namespace) -> dict:
    seed, params = 21, {"in_dim": D, "n_classes": 3, "dropout": 0.0}
    ours = build_model("dsmil", **params)
    checksum = fill_weights(ours, seed)
    theirs = ref.dsmil.MILNet(n_classes=3, dropout=0.0, act="relu", input_dim=D)
    load_mapped(theirs, ours, by_position(theirs, ours))
    x = bag(seed, 120)
    logits_gelu = gelu_logits(lambda act: ref.dsmil.MILNet(n_classes=3, dropout=0.0, act=act, input_dim=D), ours, x)
    theirs.eval()
    with torch.no_grad():
        bag_logits, max_logits = theirs(x)
    theirs.train()
    label = torch.tensor([2])
    _, ce_loss, _ = theirs(x, label=label, loss=torch.nn.CrossEntropyLoss())
    surv = {}
    for bin_, censored in ((1, 0), (2, 1)):  # the reference's [time bin, censorship] survival label
        _, loss, _ = theirs(x, label=[torch.tensor([bin_]), torch.tensor([censored])],
                            loss=ref.train_utils.NLLSurvLoss(alpha=0.0))
        surv[f"bin{bin_}_censored{censored}"] = loss.detach()
    return {"model": "dsmil", "params": params, "seed": seed, "checksum": checksum, "x": x[0], "label": label,
            "logits": bag_logits, "logits_gelu": logits_gelu, "max_instance_logits": max_logits,
            "max_instance_ce": ce_loss.detach(), "max_instance_survival_nll": surv}


def meanmax_fixture(ref: Namespace, name: str) -> dict:
    seed, params = (31, {"in_dim": D, "n_classes": 3}) if name == "maxmil" else (32, {"in_dim": D, "n_classes": 3})
    ours = build_model(name, **params)
    checksum = fill_weights(ours, seed, bias_scale=1.0)
    cls = ref.meanmax.MaxMIL if name == "maxmil" else ref.meanmax.MeanMIL
    theirs = cls(input_dim=D, n_classes=3)
    load_mapped(theirs, ours, by_position(theirs, ours))
    x = bag(seed, 70)
    with torch.no_grad():
        logits = theirs.eval()(x)
    logits_gelu = gelu_logits(lambda act: cls(input_dim=D, n_classes=3, act=act), ours, x)
    return {"model": name, "params": params, "seed": seed, "checksum": checksum, "x": x[0], "logits": logits,
            "logits_gelu": logits_gelu, "bias_scale": 1.0}


R2T_KEYS = {
    "blocks.0.attn.qkv": "online_encoder.layers.0.attn.attn.qkv",
    "blocks.0.attn.proj.0": "online_encoder.layers.0.attn.attn.proj",
    "blocks.0.attn.epeg": "online_encoder.layers.0.attn.attn.pe",
    "blocks.1.phi": "online_encoder.cr_msa.attn.phi",
    "blocks.1.attn.qkv": "online_encoder.cr_msa.attn.attn.qkv",
    "blocks.1.attn.proj.0": "online_encoder.cr_msa.attn.attn.proj",
    "norms.0": "online_encoder.layers.0.norm",
    "norms.1": "online_encoder.cr_msa.norm",
    "norm": "online_encoder.norm",
    "attention": "pool_fn.attention.attention",
    "classifier": "predictor",
    "feature": "feature",
}


def _rename(key: str, table: dict[str, str]) -> str:
    for ours, theirs in table.items():
        if key == ours or key.startswith(ours + "."):
            return theirs + key[len(ours):]
    raise KeyError(key)


def r2t_fixture(ref: Namespace) -> dict:
    seed, params = 41, {"in_dim": D, "n_classes": 3}
    ours = build_model("r2tmil", **params)
    checksum = fill_weights(ours, seed)
    theirs = ref.rrt.RRTMIL(input_dim=D, n_classes=3)
    load_mapped(theirs, ours, {k: _rename(k, R2T_KEYS) for k in ours.state_dict()})
    x = bag(seed, 150)
    with torch.no_grad():
        logits = theirs.eval()(x)
        # the reference's large-bag path (R-MSA with 16 regions when a bag has more than 100,000 instances; CR-MSA
        # keeps its 8) on this small bag: R-MSA's region count set to what that rule picks
        theirs.online_encoder.layers[0].attn.region_num = 16
        logits16 = theirs.eval()(x)
    return {"model": "r2tmil", "params": params, "seed": seed, "checksum": checksum, "x": x[0], "logits": logits,
            "logits_16_regions": logits16}


IBMIL_KEYS = {"feature.0": "embedding.embed.0", "attn": "attention", "w_q": "W_q", "w_k": "W_k",
              "classifier": "head", "confounders": "confounder_feat"}


def ibmil_fixture(ref: Namespace) -> dict:
    seed, params = 51, {"in_dim": D, "n_classes": 3, "n_confounders": 4}
    ours = build_model("ibmil", **params)
    checksum = fill_weights(ours, seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "confounders.npy"
        np.save(path, ours.confounders.numpy())
        theirs = ref.ibmil.Dattention_ori(D, 3, 0.0, "relu", str(path))
        mapping = {k: _rename(k, IBMIL_KEYS) for k in ours.state_dict() if k != "has_confounders"}
        load_mapped(theirs, ours, mapping)
        x = bag(seed, 80)
        with torch.no_grad():
            logits = theirs.eval()(x)
        logits_gelu = gelu_logits(lambda act: ref.ibmil.Dattention_ori(D, 3, 0.0, act, str(path)), ours, x, mapping)
    return {"model": "ibmil", "params": params, "seed": seed, "checksum": checksum, "x": x[0], "logits": logits,
            "logits_gelu": logits_gelu}


def kmeans_fixture() -> dict:
    """Embeddings in 3 nearby directions (about 35 degrees apart) with norms either ~0.5 or ~5: the clusters are
    the directions (what k-means on L2-normalised embeddings finds), not the two norm groups (what k-means on the
    raw embeddings finds)."""
    import faiss

    rng = np.random.Generator(np.random.PCG64(61))
    basis = np.linalg.qr(rng.standard_normal((16, 4)))[0].T  # 4 orthonormal vectors in 16-d
    dirs = basis[0] + 0.35 * basis[1:]
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    members = np.repeat(np.arange(3), 20)
    unit = dirs[members] + 0.02 * rng.standard_normal((60, 16))
    norms = np.where(rng.random(60) < 0.5, rng.uniform(0.3, 0.6, 60), rng.uniform(4.0, 6.0, 60))
    emb = (unit * norms[:, None]).astype(np.float32)
    # IBMIL's clustering: L2-normalise (+1e-10), faiss k-means with a fixed seed (66), 20 iterations, then each
    # centre = its cluster's mean raw embedding
    xb = emb / (np.linalg.norm(emb, axis=1)[:, None] + 1e-10)
    clus = faiss.Clustering(16, 3)
    clus.seed, clus.niter, clus.max_points_per_centroid = 66, 20, 10_000_000
    index = faiss.IndexFlatL2(16)
    clus.train(xb, index)
    assign = index.search(xb, 1)[1][:, 0]
    centres = np.stack([emb[assign == c].mean(0) for c in range(3)])
    return {"embeddings": torch.from_numpy(emb), "centres": torch.from_numpy(centres.astype(np.float32)),
            "assignments": torch.from_numpy(assign.astype(np.int64))}


def dtfd_fixture(dtfd: Namespace, distill: str = "MaxMinS") -> dict:
    """One step of the original DTFD-MIL training function (3 classes, 2 instances per pseudo-bag); ``distill``
    the tier-2 input: MaxMinS, MaxS or AFS."""
    seed, n, groups, total = {"MaxMinS": 71, "MaxS": 72, "AFS": 73}[distill], 60, 4, 8
    clip = 0.05  # small enough that every group's gradient is clipped, so the clipping rule shows in the fixture
    params = {"in_dim": D, "n_classes": 3, "hidden_dim": 32, "attn_dim": 16, "groups": groups,
              "total_instance": total, "distill": distill, "grad_clip": clip}
    ours = build_model("dtfd", **params)
    checksum = fill_weights(ours, seed, bias_scale=3.0)  # large classifier biases: ranking with them differs
    classifier = dtfd.network.Classifier_1fc(32, 3, 0.0)
    attention = dtfd.attention.Attention_Gated(32, 16)
    reduction = dtfd.network.DimReduction(D, 32, numLayer_Res=0)
    tier2 = dtfd.attention.Attention_with_Classifier(L=32, D=16, num_cls=3, droprate=0.0)
    modules = {"reduce": reduction, "tier1_attention": attention, "tier1_classifier": classifier,
               "tier2_attention": tier2.attention, "tier2_classifier": tier2.classifier}
    ours_keys = {
        "reduce.0.weight": ("reduce", "fc1.weight"),
        **{f"tier{t}_attention.{a}.{p}": (f"tier{t}_attention", f"attention_{b}.0.{p}")
           for t in (1, 2) for a, b in (("v", "V"), ("u", "U")) for p in ("weight", "bias")},
        **{f"tier{t}_attention.w.{p}": (f"tier{t}_attention", f"attention_weights.{p}")
           for t in (1, 2) for p in ("weight", "bias")},
        **{f"tier{t}_classifier.1.{p}": (f"tier{t}_classifier", f"fc.{p}") for t in (1, 2) for p in ("weight", "bias")},
    }
    mine = ours.state_dict()
    with torch.no_grad():
        for k, (m, rk) in ours_keys.items():
            dict(modules[m].named_parameters())[rk].copy_(mine[k])
    all_ref = [p for m in modules.values() for p in m.parameters()]
    if len(all_ref) != len(ours_keys):
        raise KeyError("DTFD mapping is incomplete")
    x = bag(seed, n)[0]
    lr, wd = 1e-3, 1e-4
    opt0 = torch.optim.Adam([*classifier.parameters(), *attention.parameters(), *reduction.parameters()],
                            lr=lr, weight_decay=wd)
    opt1 = torch.optim.Adam(tier2.parameters(), lr=lr, weight_decay=wd)
    stepped = {}

    def record(opt, label):
        real = opt.step

        def step(*a, **k):
            stepped[label] = {id(p): p.grad.clone() for g in opt.param_groups for p in g["params"]}
            return real(*a, **k)
        opt.step = step

    record(opt0, "tier1")
    record(opt1, "tier2")
    # the training function shuffles the slide list, then the bag's instances, with Python's random
    random.seed(seed)
    random.shuffle([0])
    perm = list(range(n))
    random.shuffle(perm)
    chunks = [torch.tensor(c, dtype=torch.long) for c in np.array_split(np.array(perm), groups)]
    random.seed(seed)
    run_params = Namespace(batch_size=1, device="cpu", grad_clipping=clip, train_show_freq=10**9)
    writer = Namespace(add_scalar=lambda *a, **k: None)
    label = 2
    # AFS: the tier-2 loss's backward runs through tier 1's attention, whose weights tier 1's Adam has just changed
    # in place, which current PyTorch refuses (the code predates the version check). Allowing the mutation lets it
    # run; tier 2's gradients do not depend on those saved weights, and tier 1 has already been stepped.
    with torch.autograd.graph.allow_mutation_on_saved_tensors():
        dtfd.main.train_attention_preFeature_DTFD(
            [["slide"], [x], {0: label}], classifier, reduction, attention, tier2, opt0, opt1, epoch=0,
            ce_cri=torch.nn.CrossEntropyLoss(reduction="none"), params=run_params, f_log=io.StringIO(),
            writer=writer, numGroup=groups, total_instance=total, distill=distill)
    grads, after = {}, {}
    for k, (m, rk) in ours_keys.items():
        p = dict(modules[m].named_parameters())[rk]
        grads[k] = stepped["tier1" if k.startswith(("reduce", "tier1")) else "tier2"][id(p)]
        after[k] = p.detach().clone()
    return {"model": "dtfd", "params": params, "seed": seed, "checksum": checksum, "bias_scale": 3.0, "x": x,
            "label": torch.tensor([label]), "chunks": chunks, "lr": lr, "weight_decay": wd, "grads": grads,
            "after": after}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", type=Path, required=True, help="checkout of DearCaat/MHIM-MIL")
    ap.add_argument("--dtfd", type=Path, required=True, help="checkout of hrzhang1123/DTFD-MIL")
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "parity")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    ref = reference_modules(args.reference.resolve())
    dt = dtfd_modules(args.dtfd.resolve())
    fixtures = {
        "clam_sb": clam_fixture(ref, multi=False), "clam_mb": clam_fixture(ref, multi=True),
        "dsmil": dsmil_fixture(ref), "maxmil": meanmax_fixture(ref, "maxmil"),
        "meanmil": meanmax_fixture(ref, "meanmil"), "r2tmil": r2t_fixture(ref), "ibmil": ibmil_fixture(ref),
        "ibmil_kmeans": kmeans_fixture(), "dtfd_step": dtfd_fixture(dt),
        "dtfd_step_maxs": dtfd_fixture(dt, "MaxS"), "dtfd_step_afs": dtfd_fixture(dt, "AFS"),
        "clam_sb_subtyping": clam_fixture(ref, multi=False, subtyping=True), "gabmil": gabmil_fixture(ref),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name, fx in fixtures.items():
        path = args.out / f"{name}.pt"
        torch.save(fx, path)
        print(f"{path}: {path.stat().st_size / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
