"""Parity of the baselines with their reference implementations, pinned by fixtures (tests/data/parity).

``bench/parity_baselines.py`` (run by hand, with the reference checkouts) gave the reference models the
deterministic weights of ``tests/parity_weights.py`` and stored their outputs on fixed bags. Here the same weights
go into this project's models, in the reference setting of every switch, and the outputs must agree.

Tolerances: float32 forward passes of a few hundred multiply-adds per output, in a different summation order
(einsum vs mm, fused vs separate ops): ~1e-6 relative, so atol 1e-5 on logits and losses of order 1, 1e-6 on
softmax attention (values ~1e-2); gradients the same. DTFD's step is Adam with lr 1e-3: the parameters move by
~lr, so 1e-6 on the parameters after the step is far below a sign change of any update (2e-3).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hardmil.eval.survival import nll_survival_loss
from hardmil.models import build_model

from .parity_weights import fill_weights

FIXTURES = Path(__file__).parent / "data" / "parity"


def fixture(name: str) -> dict:
    return torch.load(FIXTURES / f"{name}.pt", weights_only=True)


def ours(fx: dict, **switches):
    model = build_model(fx["model"], **{**fx["params"], **switches})
    checksum = fill_weights(model, fx["seed"], bias_scale=fx.get("bias_scale", 0.1))
    assert checksum == pytest.approx(fx["checksum"], rel=1e-12)  # the same weights as the reference got
    return model


@pytest.mark.parametrize("name", ["clam_sb", "clam_mb", "clam_sb_subtyping"])
def test_clam_matches_reference(name):
    fx = fixture(name)
    m = ours(fx).eval()
    x = fx["x"][None]
    with torch.no_grad():
        out = m(x)
    assert torch.allclose(out.logits, fx["logits"], atol=1e-5)
    shown = fx["attention"][out.logits.argmax(1)] if fx["model"] == "clam_mb" else fx["attention"][0:1]
    assert torch.allclose(out.attention, shown, atol=1e-6)
    m.train()
    out = m(x, label=fx["label"])
    # ours carries the instance loss already weighted by (1 - bag_weight); the reference returns it unweighted
    inst = out.aux_losses["instance"] / (1 - m.cfg.bag_weight)
    assert inst.item() == pytest.approx(fx["instance_loss"].item(), abs=1e-5)
    inst.backward()
    for k, g in fx["instance_classifier_grads"].items():
        mine = dict(m.instance_classifiers.named_parameters())[k].grad
        assert torch.allclose(torch.zeros_like(g) if mine is None else mine, g, atol=1e-6), k


@pytest.mark.parametrize("name", ["clam_sb", "clam_mb", "dsmil", "maxmil", "meanmil", "ibmil"])
def test_gelu_projection_matches_the_reference_training_config(name):
    """The reference's feat_cls / feat_surv configs pass ``act: gelu`` to every baseline: ``act: gelu`` reproduces
    those logits, the default ReLU projection misses them."""
    fx = fixture(name)
    x = fx["x"][None]
    got = {}
    for act in ("gelu", "relu"):
        m = ours(fx, act=act)
        if name == "ibmil":
            m.has_confounders.fill_(True)
        with torch.no_grad():
            got[act] = m.eval()(x).logits
    assert torch.allclose(got["gelu"], fx["logits_gelu"], atol=1e-5)
    assert not torch.allclose(got["relu"], fx["logits_gelu"], atol=1e-3)


def test_clam_subtyping_instance_loss_is_the_references_only_with_subtyping():
    """CLAM with ``subtyping`` (3 classes): the out-of-class instance loss, divided by the number of classes, is the
    reference's; without ``subtyping`` the instance loss misses it."""
    fx = fixture("clam_sb_subtyping")
    x = fx["x"][None]
    got = {}
    for subtyping in (True, False):
        m = ours(fx, subtyping=subtyping).train()
        got[subtyping] = (m(x, label=fx["label"]).aux_losses["instance"] / (1 - m.cfg.bag_weight)).item()
    assert got[True] == pytest.approx(fx["instance_loss"].item(), abs=1e-5)
    assert got[False] != pytest.approx(fx["instance_loss"].item(), abs=1e-3)


def test_gated_abmil_matches_reference_with_its_attention_size():
    """The reference's gated AB-MIL (attention 384, act gelu): reproduced with ``attn_dim: 384, act: gelu``; the
    ReLU projection misses it."""
    fx = fixture("gabmil")
    x = fx["x"][None]
    with torch.no_grad():
        assert torch.allclose(ours(fx).eval()(x).logits, fx["logits"], atol=1e-5)
        assert not torch.allclose(ours(fx, act="relu").eval()(x).logits, fx["logits"], atol=1e-3)


def test_clam_survival_has_no_instance_loss_and_no_scaling():
    """The reference hands CLAM [time bin, censorship]: no instance loss, the bag loss unscaled."""
    fx = fixture("clam_mb")
    m = ours(fx).train()
    m.survival_task = True  # what the training loop sets for a survival dataset
    out = m(fx["x"][None], label=torch.tensor([1]))
    assert out.aux_losses == {} and out.aux_logits == {} and out.bag_loss_weight == 1.0


def test_dsmil_matches_reference_incl_survival_instance_stream():
    fx = fixture("dsmil")
    m = ours(fx).eval()
    x = fx["x"][None]
    with torch.no_grad():
        out = m(x)
    assert torch.allclose(out.logits, fx["logits"], atol=1e-5)
    assert torch.allclose(out.instance_logits.amax(1), fx["max_instance_logits"], atol=1e-5)
    m.train()
    out = m(x, label=fx["label"])
    assert (out.aux_losses["max_instance"] / m.cfg.max_loss_weight).item() == pytest.approx(
        fx["max_instance_ce"].item(), abs=1e-5)
    # survival: the label is a time bin; the loop scores the instance stream with the censored survival NLL
    m.survival_task = True
    out = m(x, label=torch.tensor([1]))
    assert out.aux_losses == {} and out.bag_loss_weight == 1 - m.cfg.max_loss_weight
    weight, max_logits = out.aux_logits["max_instance"]
    assert weight == m.cfg.max_loss_weight
    for key, want in fx["max_instance_survival_nll"].items():
        bin_, censored = int(key[3]), int(key[-1])
        got = nll_survival_loss(max_logits, torch.tensor([bin_]), torch.tensor([1 - censored]))
        assert got.item() == pytest.approx(want.item(), abs=1e-5), key


def test_max_mil_pools_instance_logits_as_the_reference():
    fx = fixture("maxmil")
    x = fx["x"][None]
    with torch.no_grad():
        ref_setting = ours(fx).eval()(x).logits
        embedding_pool = ours(fx, pool="embedding").eval()(x).logits
    assert torch.allclose(ref_setting, fx["logits"], atol=1e-5)
    assert not torch.allclose(embedding_pool, fx["logits"], atol=1e-2)  # the switch is a real deviation


def test_mean_mil_matches_reference_either_pool():
    fx = fixture("meanmil")
    x = fx["x"][None]
    with torch.no_grad():
        for pool in ("instance_logits", "embedding"):  # the classifier is linear: both equal the reference
            assert torch.allclose(ours(fx, pool=pool).eval()(x).logits, fx["logits"], atol=1e-5), pool


def test_r2t_matches_reference():
    fx = fixture("r2tmil")
    with torch.no_grad():
        logits = ours(fx).eval()(fx["x"][None]).logits
    assert torch.allclose(logits, fx["logits"], atol=1e-5)


def test_r2t_switches_to_16_regions_above_100000_instances():
    from hardmil.models.r2t import to_regions

    m = build_model("r2tmil", in_dim=4)
    rmsa = m.blocks[0]
    assert rmsa.regions(100_000) == 8 and rmsa.regions(100_001) == 16
    blocks, side, n = to_regions(torch.zeros(100_001, 2), rmsa.regions(100_001))
    assert blocks.shape[0] == 16 * 16 and side % 16 == 0 and side >= 317  # ceil(sqrt(100001)) = 317
    # the rule is read from the config: a small threshold exercises the 16-region path on a small bag
    small = build_model("r2tmil", in_dim=4, hidden_dim=32, heads=4, crmsa_heads=4, large_bag_instances=10).eval()
    with torch.no_grad():
        assert small(torch.randn(1, 40, 4)).logits.shape == (1, 2)


def test_r2t_16_region_path_matches_reference():
    """The reference's large-bag path (R-MSA 16 regions, CR-MSA 8) on the fixture's bag of 150: ours with the
    threshold lowered below 150 reproduces it; the 8-region path (the default threshold) misses it."""
    fx = fixture("r2tmil")
    x = fx["x"][None]
    with torch.no_grad():
        large = ours(fx, large_bag_instances=100).eval()(x).logits
        small = ours(fx).eval()(x).logits
    assert torch.allclose(large, fx["logits_16_regions"], atol=1e-5)
    assert not torch.allclose(small, fx["logits_16_regions"], atol=1e-3)


def test_ibmil_head_matches_reference():
    fx = fixture("ibmil")
    m = ours(fx)
    m.has_confounders.fill_(True)
    with torch.no_grad():
        logits = m.eval()(fx["x"][None]).logits
    assert torch.allclose(logits, fx["logits"], atol=1e-5)


def test_ibmil_confounders_match_reference_kmeans():
    """IBMIL's k-means (faiss, 20 iterations, seed, on L2-normalised embeddings; centres = raw-space means)."""
    from sklearn.cluster import KMeans

    from hardmil.mining.confounders import confounder_centres

    fx = fixture("ibmil_kmeans")
    emb = fx["embeddings"].numpy()
    want = fx["centres"].numpy()

    def rows(c):  # clusters are unordered: compare as a sorted set of rows
        return c[np.lexsort(c.T[::-1])]

    for seed in (0, 1, 2):
        got = confounder_centres(emb, 3, seed)
        assert np.allclose(rows(got), rows(want), atol=1e-5), seed
    # the former rule (k-means on the raw embeddings) clusters by norm here and misses the reference
    raw = KMeans(n_clusters=3, n_init=10, random_state=0).fit(emb).cluster_centers_
    assert not np.allclose(rows(raw), rows(want), atol=1e-2)


def _dtfd_step(fx: dict, **switches) -> tuple[dict, dict]:
    m = ours(fx, **switches).train()
    chunks = [c for c in fx["chunks"]]
    m.pseudo_bags = lambda n, device: chunks  # the reference's shuffle of this bag
    opt = torch.optim.Adam(m.parameters(), lr=fx["lr"], weight_decay=fx["weight_decay"])
    opt.zero_grad()
    out = m(fx["x"][None], label=fx["label"])
    m.training_step(out, F.cross_entropy(out.logits, fx["label"]))
    grads = {k: p.grad.clone() for k, p in m.named_parameters()}
    opt.step()
    return grads, {k: p.detach().clone() for k, p in m.named_parameters()}


@pytest.mark.parametrize("name", ["dtfd_step", "dtfd_step_maxs", "dtfd_step_afs"])
def test_dtfd_training_step_matches_reference(name):
    """One step of the original training function, each distillation (MaxMinS, MaxS, AFS = the default)."""
    fx = fixture(name)
    grads, after = _dtfd_step(fx)
    for k, g in fx["grads"].items():
        assert torch.allclose(grads[k], g, atol=1e-6, rtol=1e-4), k
    for k, p in fx["after"].items():
        assert torch.allclose(after[k], p, atol=1e-6), k


@pytest.mark.parametrize("switch", [{"tier1_step": "joint"}, {"clip": "joint"}, {"rank_with_bias": True}])
def test_dtfd_each_deviation_switch_departs_from_the_reference(switch):
    """The non-reference setting of each switch changes the step on this fixture (the fixture can tell)."""
    fx = fixture("dtfd_step")
    grads, _ = _dtfd_step(fx, **switch)
    assert any(not torch.allclose(grads[k], g, atol=1e-4, rtol=1e-3) for k, g in fx["grads"].items())


@pytest.mark.parametrize("name,other", [("dtfd_step_afs", "MaxMinS"), ("dtfd_step_maxs", "AFS"),
                                        ("dtfd_step", "MaxS")])
def test_dtfd_other_distillation_misses_the_reference_step(name, other):
    fx = fixture(name)
    grads, _ = _dtfd_step(fx, distill=other)
    assert any(not torch.allclose(grads[k], g, atol=1e-4, rtol=1e-3) for k, g in fx["grads"].items())


def test_survival_loop_marks_survival_task_and_scores_aux_logits_with_the_survival_loss():
    """The training loop, survival task: every submodule with ``survival_task`` (CLAM, DSMIL, DTFD, also inside
    MHIM) is marked (the reference's [bin, censorship] turns CLAM's instance loss and DTFD's tier 1 off), the
    time bin is still passed as the label, and ``aux_logits`` (DSMIL's instance stream) are scored with the
    censored survival NLL and added with their weight."""
    from hardmil.data.bags import Bag
    from hardmil.data.bagset import BagSet
    from hardmil.models.base import MILModel, MILOutput
    from hardmil.train.loop import TrainConfig, train

    class Spy(MILModel):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 4)
            self.inner = build_model("dtfd", in_dim=3)
            self.labels = []

        def forward(self, x, mask=None, label=None, coords=None):
            self.labels.append(None if label is None else int(label[0]))
            logits = self.lin(x.mean(1))
            out = MILOutput(logits=logits, bag_loss_weight=0.5)
            if self.training:
                out.aux_logits["stream"] = (0.5, 2 * logits)
            return out

    torch.manual_seed(0)
    feats = [torch.randn(5, 3) for _ in range(4)]
    data = BagSet([Bag(f"b{i}", f"b{i}", i, f.numpy(), extra={"time": float(i + 1), "event": 1 - i % 2})
                   for i, f in enumerate(feats)])
    m = Spy()
    with torch.no_grad():
        want = np.mean([0.5 * nll_survival_loss(m.lin(f.mean(0, keepdim=True)), data.labels[i:i + 1],
                                                data.events[i:i + 1]).item()
                        + 0.5 * nll_survival_loss(2 * m.lin(f.mean(0, keepdim=True)), data.labels[i:i + 1],
                                                  data.events[i:i + 1]).item() for i, f in enumerate(feats)])
    res = train(m, data, data, TrainConfig(epochs=1, lr=0.0, min_lr=0.0, device="cpu"), progress=False)
    assert res.history[0]["train_loss"] == pytest.approx(want, rel=1e-5)
    assert m.survival_task and m.inner.survival_task
    assert sorted(label for label in m.labels if label is not None) == [0, 1, 2, 3]  # the bins, in training


def test_mhim_over_dsmil_in_survival_scores_the_instance_stream_with_the_survival_loss():
    """MHIM wraps DSMIL: the loop's survival flag reaches the student, MHIM still trains (masking, teacher) with the
    time bin as its label, and the instance stream comes back in aux_logits."""
    import dataclasses

    torch.manual_seed(0)
    m = build_model("mhim", in_dim=8, baseline="dsmil", n_classes=4, teacher_dropout=False, mask_high=0.1)
    m.init_teacher({"model": "dsmil", "model_config": dataclasses.asdict(m.student.cfg),
                    "state_dict": m.student.state_dict()})
    for sub in m.modules():  # what the training loop does for a survival dataset
        if hasattr(sub, "survival_task"):
            sub.survival_task = True
    out = m.train()(torch.randn(1, 30, 8), label=torch.tensor([2]))
    assert "max_instance" in out.aux_logits and "max_instance" not in out.aux_losses
    assert "consistency" in out.aux_losses and out.bag_loss_weight == 0.5
    assert int((out.attention[0] > 0).sum()) < 30  # high-score masking ran: this is MHIM training, not inference


@pytest.mark.parametrize("name", ["dtfd", "maxmil", "meanmil", "clam_sb", "clam_mb", "dsmil", "ibmil", "mamba2d",
                                  "r2tmil", "li2019"])
def test_numeric_config_fields_declare_their_range(name):
    import dataclasses

    from hardmil.models import model_config
    from hardmil.models.base import field_range

    cfg = model_config(name)
    numeric = [f for f in dataclasses.fields(cfg)
               if isinstance(getattr(cfg, f.name), (int, float)) and not isinstance(getattr(cfg, f.name), bool)]
    assert numeric and all(field_range(f) is not None for f in numeric), name
    with pytest.raises(ValueError, match=f"model '{name}': n_classes = 1 is out of range"):
        model_config(name, n_classes=1)
