"""Recipe parity with the MHIM-MIL authors' trainer (docs/recipe.md).

The fixtures in tests/data/parity (``trajectory_abmil.pt``, ``trajectory_mhim_v2.pt``, ``selection.pt``) were written
by ``bench/parity_training.py fixture`` from the reference checkout (DearCaat/MHIM-MIL 9d0c91a): its own
``BaseTrainer.train`` with the optimiser, timm cosine scheduler, criterion and GradScaler of its ``build_train``, its
MHIM-v2 (masks recorded per step), its ``EarlyStopping`` and save-on-strict-improvement rule. Here the project's
``hardmil.train.loop.train`` runs from the same initial weights, in its own bag order (which the fixture gave the
reference), with the schema's default recipe; per-step losses, learning rates and the final weights must match.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from hardmil.config import load_schema, validate_config
from hardmil.data.bags import Bag
from hardmil.data.bagset import BagSet, feature_stats
from hardmil.models import build_model
from hardmil.train import loop
from hardmil.train.loop import TrainConfig, train

PARITY = Path(__file__).parent / "data" / "parity"
TOL = 1e-5  # relative, the target


class Stop(Exception):
    pass


def schema_train_defaults() -> dict:
    """The train block a config that says nothing about training gets."""
    cfg = validate_config({"datasets": {"d": {"classes": ["a", "b"]}}, "methods": {"m": {"model": "abmil"}}},
                          copy.deepcopy(load_schema()))
    return cfg["train"]


def default_train_config(recipe: dict, seed: int) -> tuple[TrainConfig, bool]:
    """The schema's default recipe with the fixture's budget (lr, epochs, ...): (TrainConfig, standardize)."""
    defaults = schema_train_defaults()
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in defaults.items() if k in fields})
    cfg = dataclasses.replace(cfg, lr=recipe["lr"], weight_decay=recipe["weight_decay"], epochs=recipe["epochs"],
                              min_lr=recipe["min_lr"], seed=seed, device="cpu", amp=False, patience=100)
    return cfg, defaults["standardize"]


def bagset(fx: dict, standardize: bool) -> BagSet:
    bags = [Bag(f"b{i}", f"b{i}", int(y), x.numpy()) for i, (x, y) in enumerate(zip(fx["bags"], fx["labels"],
                                                                                     strict=True))]
    mean, std = feature_stats(bags) if standardize else (None, None)
    return BagSet(bags, mean, std)


def run_project(net, fx: dict, *, standardize: bool | None = None, cfg_over: dict | None = None):
    """Train ``net`` for the fixture's epochs; return (per-step bag losses, per-step aux losses, history)."""
    cfg, default_std = default_train_config(fx["recipe"], fx["seed"])
    cfg = dataclasses.replace(cfg, **(cfg_over or {}))
    data = bagset(fx, default_std if standardize is None else standardize)
    losses, aux = [], []
    real_step = net.training_step

    def training_step(out, main_loss):
        losses.append(float(main_loss.detach()))
        if "consistency" in out.aux_losses:
            aux.append(float(out.aux_losses["consistency"].detach()) / net.cfg.alpha)
        return real_step(out, main_loss)

    net.training_step = training_step
    history = []

    def stop(epoch):
        if epoch + 1 == fx["recipe"]["run_epochs"]:
            raise Stop

    torch.manual_seed(0)
    with pytest.raises(Stop):
        train(net, data, data, cfg, on_epoch_end=lambda e: (history.append(e), stop(e)), progress=False)
    return torch.tensor(losses), torch.tensor(aux)


def close(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest difference relative to the largest magnitude of ``b`` (a tensor's scale)."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


# The attention logits' bias shifts every instance's logit alike, and the softmax over instances ignores that: its
# gradient is zero up to round-off, which Adam normalises into steps of about lr in arbitrary directions. It has no
# effect on any output (test_abmil_outputs_match checks the outputs), so its value is not compared.
SHIFT_INVARIANT = {"attn_w.bias"}


def assert_weights(net, expected: dict):
    sd = net.state_dict()
    worst = max(close(sd[k].float(), v.float()) for k, v in expected.items() if k not in SHIFT_INVARIANT)
    assert worst <= TOL, f"final weights differ from the reference trainer's by {worst:.2e} (relative)"


@pytest.fixture(scope="module")
def abmil_fx():
    return torch.load(PARITY / "trajectory_abmil.pt", weights_only=True)


@pytest.fixture(scope="module")
def mhim_fx():
    return torch.load(PARITY / "trajectory_mhim_v2.pt", weights_only=True)


def abmil_net(fx):
    net = build_model("abmil", **fx["config"])
    net.load_state_dict(fx["init"])
    return net


def mhim_net(fx):
    net = build_model("mhim", **fx["config"])
    missing, unexpected = net.load_state_dict(fx["init"], strict=False)
    assert not unexpected and set(missing) == {"step", "has_teacher"}
    net.has_teacher.fill_(True)
    kept, recycled = list(fx["kept"]), list(fx["recycled"])
    steps = iter(range(len(kept)))

    def replay(score, heads=None):  # the reference's masks of this step (high-score top-k, then its random keep)
        i = next(steps)
        return kept[i], recycled[i]

    net.select = replay
    return net


def test_bag_order_is_the_one_the_fixture_gave_the_reference(abmil_fx):
    for epoch, order in enumerate(abmil_fx["orders"]):
        g = torch.Generator().manual_seed(abmil_fx["seed"] * 100_003 + epoch)
        assert torch.randperm(len(abmil_fx["bags"]), generator=g).tolist() == order.tolist()


def test_abmil_trajectory_matches_the_reference_trainer(abmil_fx):
    net = abmil_net(abmil_fx)
    losses, _ = run_project(net, abmil_fx)
    assert len(losses) == len(abmil_fx["losses"])
    assert close(losses, abmil_fx["losses"]) <= TOL
    assert_weights(net, abmil_fx["final"])
    theirs = build_model("abmil", **abmil_fx["config"])
    theirs.load_state_dict(abmil_fx["final"])
    net.eval(), theirs.eval()
    with torch.no_grad():
        for x in abmil_fx["bags"]:
            assert close(net(x[None]).logits, theirs(x[None]).logits) <= TOL


def test_mhim_v2_trajectory_matches_the_reference_trainer(mhim_fx):
    net = mhim_net(mhim_fx)
    losses, aux = run_project(net, mhim_fx)
    assert close(losses, mhim_fx["losses"]) <= TOL
    assert close(aux, mhim_fx["consistency"]) <= TOL
    assert_weights(net, mhim_fx["final"])  # student, EMA teacher and the GRN's EMA queries


def test_learning_rate_per_epoch_is_the_reference_schedule(abmil_fx):
    """timm's per-epoch cosine (the reference) = the project's schedule, epoch by epoch, to the floor."""
    cfg, _ = default_train_config(abmil_fx["recipe"], 0)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.min_lr)
    lrs = []
    for _ in abmil_fx["lrs"]:
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert close(torch.tensor(lrs), abmil_fx["lrs"].double()) <= 1e-9


@pytest.mark.parametrize("change", [{"standardize": True}, {"weight_decay": 0.0}, {"min_lr": 1e-4}])
def test_a_changed_recipe_element_misses_the_reference(abmil_fx, change):
    """The trajectory test can fail: z-scoring the features, or another optimiser or schedule, leaves the
    reference's trajectory by far more than the tolerance."""
    net = abmil_net(abmil_fx)
    std = change.pop("standardize", None)
    if change:
        abmil_fx = {**abmil_fx, "recipe": {**abmil_fx["recipe"], **change}}
    losses, _ = run_project(net, abmil_fx, standardize=std)
    sd = net.state_dict()
    worst = max(close(sd[k], v) for k, v in abmil_fx["final"].items() if k not in SHIFT_INVARIANT)
    assert close(losses, abmil_fx["losses"]) > 100 * TOL or worst > 100 * TOL


def test_default_recipe_is_the_references():
    """The schema's defaults are the reference's feat_cls.yaml / options.py training settings."""
    d = schema_train_defaults()
    assert d["standardize"] is False  # the reference feeds raw features
    assert (d["lr"], d["weight_decay"], d["epochs"], d["min_lr"], d["patience"]) == (2e-4, 1e-5, 200, 1e-7, 20)
    assert (d["selection_metric"], d["selection_ties"], d["patience_ties"], d["fold_seeds"]) == (
        "auto", "earliest", "reset", "shared")


def _scripted(monkeypatch, scores, losses=None):
    """The selection set scores ``scores`` in turn (selection loss 1.0, or ``losses`` in turn)."""
    it, lit = iter(scores), iter(losses or [1.0] * len(scores))
    monkeypatch.setattr(loop, "_score", lambda *a, **k: {"loss": next(lit), "auc": next(it)})


@pytest.mark.parametrize("case", torch.load(PARITY / "selection.pt", weights_only=True)["cases"],
                         ids=lambda c: f"p{c['patience']}-m{c['max_epoch']}-{len(c['scores'])}")
def test_selection_and_early_stopping_follow_the_reference(monkeypatch, case):
    _scripted(monkeypatch, case["scores"])
    cfg = TrainConfig(epochs=len(case["scores"]), patience=case["patience"], min_epochs=case["max_epoch"] + 2,
                      device="cpu", amp=False)
    g = torch.Generator().manual_seed(0)
    bags = BagSet([Bag(f"b{i}", f"b{i}", i % 2, torch.randn(5, 3, generator=g).numpy()) for i in range(4)])
    res = train(build_model("abmil", in_dim=3, hidden_dim=4, attn_dim=2), bags, bags, cfg, progress=False)
    assert (res.best_epoch, len(res.history)) == (case["kept_epoch"], case["epochs_run"])


def test_tie_rules_are_what_the_selection_fixture_pins(monkeypatch):
    """The other tie rules give other epochs on the fixture's scripts (so the fixture test can fail)."""
    cases = torch.load(PARITY / "selection.pt", weights_only=True)["cases"]
    g = torch.Generator().manual_seed(0)
    bags = BagSet([Bag(f"b{i}", f"b{i}", i % 2, torch.randn(5, 3, generator=g).numpy()) for i in range(4)])
    for over in ({"patience_ties": "count"}, {"selection_ties": "loss"}, {"min_epochs_shift": -2}):
        differs = 0
        for case in cases:
            shift = over.get("min_epochs_shift", 0)
            extra = {k: v for k, v in over.items() if k != "min_epochs_shift"}
            # later epochs: lower loss, so a tie goes to the later epoch under selection_ties 'loss'
            _scripted(monkeypatch, case["scores"], [1.0 - 0.01 * e for e in range(len(case["scores"]))])
            cfg = TrainConfig(epochs=len(case["scores"]), patience=case["patience"],
                              min_epochs=case["max_epoch"] + 2 + shift, device="cpu", amp=False, **extra)
            res = train(build_model("abmil", in_dim=3, hidden_dim=4, attn_dim=2), bags, bags, cfg, progress=False)
            differs += (res.best_epoch, len(res.history)) != (case["kept_epoch"], case["epochs_run"])
        assert differs > 0, over


def test_mhim_v2_without_the_references_stale_query_gradient_misses_it(mhim_fx):
    """``recycle.stale_queries: false`` back-propagates through the queries of the forward, not the reference's
    already-updated ones: the GRN's LayerNorm then leaves the reference trajectory (models/mhim.py docstring)."""
    fx = {**mhim_fx, "config": {**mhim_fx["config"], "grn_stale_queries": False}}
    net = mhim_net(fx)
    run_project(net, fx)
    assert close(net.state_dict()["grn.norm.weight"], fx["final"]["grn.norm.weight"]) > 5 * TOL
