"""MHIM-MIL / MHIM-v2 framework over AB-MIL: teacher, scoring, masking, GRN, consistency, EMA."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from hardmil.models import build_model
from hardmil.models.base import MILOutput
from hardmil.models.mhim import cosine


def mhim(**params):
    torch.manual_seed(0)
    m = build_model("mhim", in_dim=8, **params)
    m.init_teacher({"model": "abmil", "model_config": dataclasses.asdict(m.student.cfg),
                    "state_dict": m.student.state_dict()})
    return m


def test_high_masking_exact_top_and_randomly_high():
    m = mhim(mask_high=0.1, mask_high_random=1.0, rsm_ratio=0.0)
    score = torch.arange(100, dtype=torch.float32)  # instance i has score i
    kept, rec = m.select(score)
    assert len(rec) == 0 and set(range(100)) - set(kept.tolist()) == set(range(90, 100))
    r = mhim(mask_high=0.1, mask_high_random=0.5, rsm_ratio=0.0)
    for _ in range(20):
        kept, _ = r.select(score)
        masked = set(range(100)) - set(kept.tolist())
        assert len(masked) == 10 and masked <= set(range(80, 100))  # top 2x candidates, random half
    seen = set()
    for _ in range(50):
        seen |= set(range(100)) - set(r.select(score)[0].tolist())
    assert len(seen) > 10  # really random within the candidates


def test_low_random_and_rsm_partition():
    m = mhim(mask_high=0.1, mask_high_random=1.0, mask_low=0.2, rsm_ratio=0.5)
    score = torch.randn(50)
    kept, rec = m.select(score)
    masked_high = set(score.topk(5).indices.tolist())
    masked_low = set(score.topk(10, largest=False).indices.tolist())
    remaining = set(range(50)) - masked_high - masked_low
    assert set(kept.tolist()) | set(rec.tolist()) == remaining
    assert not set(kept.tolist()) & set(rec.tolist())
    assert len(kept) == int(len(remaining) * 0.5)  # the reference keeps int(L (1 - rsm_ratio))
    v1 = mhim(version="v1", mask_high=0.0, mask_random=0.3, rsm_ratio=0.5)
    kept, rec = v1.select(torch.randn(40))
    assert len(kept) == 40 - 12 and len(rec) == 0  # v1 has no GRN


def test_cosine_schedules():
    assert cosine(0.03, 0.0, 0, 100) == pytest.approx(0.03)
    assert cosine(0.03, 0.0, 50, 100) == pytest.approx(0.015)
    assert cosine(0.03, 0.0, 100, 100) == pytest.approx(0.0)
    m = mhim(mask_high=0.04, mask_high_cosine=True)
    m.set_schedule(10)
    m.step.fill_(10)
    assert m.high_ratio() == pytest.approx(0.0)


def test_v2_score_is_class_aware_probability_and_v1_is_attention():
    m = mhim(teacher_dropout=False)
    x = torch.randn(1, 7, 8)
    score, z = m.teacher_scores(x)
    t = m.teacher.eval()
    h = t.embed(x)
    zz, a = t.aggregate(h)
    expected = torch.softmax(F.linear(a[0, :, None] * h[0], t.classifier.weight), -1).max(-1).values
    assert torch.allclose(score, expected, atol=1e-6) and torch.allclose(z, zz[0], atol=1e-6)
    v1 = mhim(version="v1", teacher_dropout=False)
    assert torch.allclose(v1.teacher_scores(x)[0], v1.teacher.eval().aggregate(v1.teacher.embed(x))[1][0])


def test_mhim_over_dsmil():
    torch.manual_seed(0)
    m = build_model("mhim", in_dim=8, baseline="dsmil", teacher_dropout=False, rsm_ratio=0.3, mask_high=0.1)
    m.init_teacher({"model": "dsmil", "model_config": dataclasses.asdict(m.student.cfg),
                    "state_dict": m.student.state_dict()})
    x = torch.randn(1, 20, 8)
    score, z = m.teacher_scores(x)
    t = m.teacher.eval()
    assert torch.allclose(score, t.instance_classifier(t.feature(x))[0].amax(-1), atol=1e-6)
    assert z.shape == (2 * 512,)
    out = m.train()(x, label=torch.tensor([1]))
    assert set(out.aux_losses) == {"max_instance", "consistency"} and out.bag_loss_weight == 0.5
    assert torch.allclose(m.eval()(x).logits, m.student(x).logits)


def test_training_step_consistency_grn_and_ema():
    m = mhim(alpha=0.5, rsm_ratio=0.5, grn_tokens=2, momentum=0.9).train()
    q0 = m.grn.queries.clone()
    out = m(torch.randn(1, 30, 8), label=torch.tensor([1]))
    assert set(out.aux_losses) == {"consistency"} and out.aux_losses["consistency"].item() > 0
    assert not torch.equal(q0, m.grn.queries)  # EMA of the GRN outputs
    assert "grn.queries" not in dict(m.named_parameters())  # never a gradient
    assert not any(p.requires_grad for p in m.teacher.parameters())
    (out.logits.sum() + sum(out.aux_losses.values())).backward()
    assert m.grn.to_q.weight.grad is not None  # the GRN trains through the student
    with torch.no_grad():
        for p in m.student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in m.teacher.parameters()]
    m.after_step()
    for b, t, s in zip(before, m.teacher.parameters(), m.student.parameters(), strict=True):
        assert torch.allclose(t, 0.9 * b + 0.1 * s, atol=1e-6)
    assert int(m.step) == 1


def test_consistency_value_by_hand():
    m = mhim(alpha=1.0, rsm_ratio=0.0, mask_high=0.0, teacher_dropout=False).train()
    m.student.feature[2].p = 0.0
    x = torch.randn(1, 5, 8)
    out = m(x, label=torch.tensor([0]))
    _, zt = m.teacher_scores(x)
    expected = -(torch.softmax(zt / 0.1, -1) * torch.log_softmax(out.embedding[0], -1)).sum()
    assert out.aux_losses["consistency"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_inference_is_the_student_on_every_instance():
    m = mhim(mask_high=0.5).eval()
    x = torch.randn(1, 9, 8)
    assert torch.allclose(m(x).logits, m.student(x).logits)


def test_teacher_errors():
    m = build_model("mhim", in_dim=8)
    with pytest.raises(ValueError, match="no teacher"):
        m.train()(torch.randn(1, 5, 8), label=torch.tensor([0]))
    with pytest.raises(ValueError, match="is a 'dsmil' model"):
        m.init_teacher({"model": "dsmil", "model_config": {}, "state_dict": {}})
    cfg = dataclasses.asdict(m.student.cfg) | {"hidden_dim": 256}
    with pytest.raises(ValueError, match="hidden_dim"):
        m.init_teacher({"model": "abmil", "model_config": cfg, "state_dict": {}})
    with pytest.raises(ValueError, match="cannot wrap 'meanmil'"):  # no hooks
        build_model("mhim", in_dim=8, baseline="meanmil")
    assert math.isclose(build_model("mhim", in_dim=8).cfg.momentum, 0.9997)


def test_transmil_class_token_row_matches_the_layer_output():
    """The explicit class-token attention row reproduces the Nystrom layer's own output for that token."""
    torch.manual_seed(0)
    t = build_model("transmil", in_dim=8, landmarks=4).eval()
    x = torch.randn(1, 11, 512)
    layer = t.layers[0]
    attn, v = layer.row_attention(x, row=0)
    a1, a2_inv, a3, vv, pad = layer._factors(x)
    full = ((a1 @ a2_inv) @ (a3 @ vv))[:, :, pad]  # the class token's attention output, per head
    assert torch.allclose((attn[..., None] * v).sum(2), full, atol=1e-5)


def test_mhim_over_transmil():
    torch.manual_seed(0)
    m = build_model("mhim", in_dim=8, baseline="transmil", baseline_params={"landmarks": 4}, teacher_dropout=False,
                    mask_high=0.1, rsm_ratio=0.3)
    m.init_teacher({"model": "transmil", "model_config": dataclasses.asdict(m.student.cfg),
                    "state_dict": m.student.state_dict()})
    x = torch.randn(1, 15, 8)
    score, z = m.teacher_scores(x)
    assert score.shape == (15,) and ((score > 0) & (score <= 1)).all() and z.shape == (512,)
    v1 = build_model("mhim", in_dim=8, baseline="transmil", baseline_params={"landmarks": 4}, version="v1")
    v1.init_teacher({"model": "transmil", "model_config": dataclasses.asdict(v1.student.cfg),
                     "state_dict": v1.student.state_dict()})
    s1, _ = v1.teacher_scores(x)
    assert s1.shape == (15,)
    out = m.train()(x, label=torch.tensor([0]))
    (out.logits.sum() + sum(out.aux_losses.values())).backward()
    assert torch.allclose(m.eval()(x).logits, m.student(x).logits)


def test_issue_counts_n1000_and_nested_names():
    """N=1000, h=0.03: r=0.5 masks 30 among the top 60; r=1 masks exactly the top 30 (plain nested names)."""
    score = torch.randperm(1000).float()
    top60, top30 = set(score.topk(60).indices.tolist()), set(score.topk(30).indices.tolist())
    rhsm = mhim(mask={"high_ratio": 0.03, "high_random_fraction": 0.5, "random_ratio": 0.0})
    assert rhsm.cfg.mask_high == 0.03 and rhsm.cfg.mask_high_random == 0.5 and rhsm.cfg.rsm_ratio == 0.0
    for _ in range(10):
        masked = set(range(1000)) - set(rhsm.select(score)[0].tolist())
        assert len(masked) == 30 and masked <= top60
    hsm = mhim(mask={"high_ratio": 0.03, "high_random_fraction": 1.0, "random_ratio": 0.0})
    assert set(range(1000)) - set(hsm.select(score)[0].tolist()) == top30
    with pytest.raises(ValueError, match="high_rate"):
        mhim(mask={"high_rate": 0.03})


def test_rsm_without_grn_drops_the_random_share():
    m = mhim(mask_high=0.03, rsm_ratio=0.8, grn=False)
    kept, rec = m.select(torch.randn(1000))
    assert len(rec) == 0 and len(kept) == 970 - int(970 * 0.8)


def test_grn_associative_form_equals_explicit_attention():
    m = mhim(grn_tokens=3).eval()
    x = torch.randn(57, m.student.cfg.hidden_dim, requires_grad=True)
    fast, slow = m.grn(x), m.grn.forward_explicit(x)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
    g_fast = torch.autograd.grad(fast.square().sum(), [x, m.grn.to_kv.weight])
    g_slow = torch.autograd.grad(slow.square().sum(), [x, m.grn.to_kv.weight])
    for a, b in zip(g_fast, g_slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_table10_teacher_variants():
    x, y = torch.randn(1, 40, 8), torch.tensor([1])
    # 'none': explicitly untrained teacher (no checkpoint needed, a checkpoint is then an error)
    torch.manual_seed(0)
    fresh = build_model("mhim", in_dim=8, teacher={"init": "none"}).train()
    fresh(x, label=y)
    with pytest.raises(ValueError, match="teacher_init is 'none'"):
        fresh.init_teacher({"model": "abmil", "model_config": dataclasses.asdict(fresh.student.cfg),
                            "state_dict": fresh.student.state_dict()})
    # 'student': the student scores its own bag; no EMA; the student stays in train mode
    own = mhim(teacher={"update": "student", "momentum": 0.5, "dropout": False}).train()
    before = [p.clone() for p in own.teacher.parameters()]
    with torch.no_grad():
        for p in own.student.parameters():
            p.add_(1.0)
    own(x, label=y)
    own.after_step()
    assert own.student.training
    assert all(torch.equal(a, b) for a, b in zip(before, own.teacher.parameters(), strict=True))
    score, _ = own.teacher_scores(x)  # from the (shifted) student, not from the untouched teacher copy
    s = own.student.eval()
    with torch.no_grad():
        h = s.embed(x)
        torch.testing.assert_close(score, s.instance_scores(h, s.head(h), "v2"))
        t = own.teacher.eval()
        ht = t.embed(x)
        assert not torch.allclose(score, t.instance_scores(ht, t.head(ht), "v2"))
    # fixed teacher ('Init.' row): momentum 1.0 leaves it untouched
    fixed = mhim(teacher={"momentum": 1.0}).train()
    t0 = [p.clone() for p in fixed.teacher.parameters()]
    fixed(x, label=y)
    fixed.after_step()
    assert all(torch.equal(a, b) for a, b in zip(t0, fixed.teacher.parameters(), strict=True))


def test_lsm_mode_and_attention_score_switch():
    m = mhim(mask_high=0.1, mask_high_random=1.0, rsm_ratio=0.5, mask={"random_mode": "low"})
    score = torch.arange(100, dtype=torch.float32)
    kept, rec = m.select(score)
    assert set(rec.tolist()) == set(range(45)) and set(kept.tolist()) == set(range(45, 90))
    x = torch.randn(1, 30, 8)
    att = mhim(teacher={"dropout": False}, mask={"score": "attention"})
    prob = mhim(teacher={"dropout": False})
    s_att, _ = att.teacher_scores(x)
    s_prob, _ = prob.teacher_scores(x)
    t = prob.teacher.eval()
    with torch.no_grad():
        h = t.embed(x)
        torch.testing.assert_close(s_att, t.instance_scores(h, t.head(h), "v1"))
        torch.testing.assert_close(s_prob, t.instance_scores(h, t.head(h), "v2"))
    assert not torch.allclose(s_att, s_prob)


def test_transmil_no_grad_heads_one_at_a_time_and_scores_from_the_forward():
    """Without autograd the Nystrom layers run head by head (MHIM's teacher): the same output; the class token's
    row in ``extras`` is the explicit row of layer 1, and TransMIL's attention is that row over the instances."""
    torch.manual_seed(0)
    t = build_model("transmil", in_dim=8, landmarks=4).eval()
    for layer in t.layers:
        layer.split_heads_above = 0  # split even this small bag
    h = t.embed(torch.randn(1, 13, 8))
    with_grad = t.head(h)
    with torch.no_grad():
        no_grad = t.head(h)
    torch.testing.assert_close(no_grad.logits, with_grad.logits.detach())
    torch.testing.assert_close(no_grad.extras["cls_attention"], with_grad.extras["cls_attention"])
    x, _ = t._tokens(h)
    attn, v = t.layers[0].row_attention(t.norms[0](x), row=0)
    torch.testing.assert_close(no_grad.extras["cls_attention"], attn[:, :, 1:14].detach())
    torch.testing.assert_close(no_grad.extras["cls_values"], v[:, :, 1:14].detach())
    mean = attn[:, :, 1:14].mean(1).clamp_min(0)
    torch.testing.assert_close(no_grad.attention, (mean / mean.sum()).detach())
    with pytest.raises(ValueError, match="output of head"):
        t.instance_scores(h, MILOutput(logits=no_grad.logits), "v2")


def test_abmil_class_aware_probability_is_the_classifier_on_weighted_instances():
    """v2's score max_c softmax_c(W (a_i h_i)) (no classifier bias, as the reference), taken from head()'s instance
    logits, equals the definition; a trained (non-zero) bias does not enter."""
    torch.manual_seed(0)
    m = build_model("abmil", in_dim=8, n_classes=3).eval()
    with torch.no_grad():
        m.classifier.bias.copy_(torch.tensor([2.0, -1.0, 0.5]))
    h = m.embed(torch.randn(1, 17, 8))
    out = m.head(h)
    a = out.attention[0]
    expected = torch.softmax((a[:, None] * h[0]) @ m.classifier.weight.T, dim=-1).amax(-1)
    torch.testing.assert_close(m.instance_scores(h, out, "v2"), expected)
    with_bias = torch.softmax(m.classifier(a[:, None] * h[0]), dim=-1).amax(-1)
    assert (with_bias - expected).abs().max() > 1e-2
    torch.testing.assert_close(m.instance_scores(h, out, "v1"), a)


@pytest.mark.parametrize("params,key", [
    ({"mask_high": -0.1}, "mask_high"), ({"mask_high": 1.0}, "mask_high"), ({"mask_high": 1.5}, "mask_high"),
    ({"rsm_ratio": 1.5}, "rsm_ratio"), ({"rsm_ratio": -0.5}, "rsm_ratio"),
    ({"mask": {"high_ratio": -0.2}}, r"mask\.high_ratio"), ({"mask": {"random_ratio": 1.2}}, r"mask\.random_ratio"),
    ({"teacher": {"momentum": 1.01}}, r"teacher\.momentum"), ({"momentum": -0.1}, "momentum"),
    ({"mask_high_random": 0.0}, "mask_high_random"), ({"alpha": -1.0}, "alpha"), ({"grn_tokens": 0}, "grn_tokens"),
    ({"baseline_params": {"dropout": 1.0}}, "dropout"), ({"mask_high": float("nan")}, "mask_high"),
])
def test_out_of_range_parameters_are_errors_naming_the_key(params, key):
    """Issue 16: every numeric MHIM field declares its range; the nested names are checked as written."""
    with pytest.raises(ValueError, match=rf"model '(mhim|abmil)': {key} = .* out of range"):
        build_model("mhim", in_dim=8, **params)


def test_high_ratio_over_random_fraction_above_one_is_capped_as_the_reference():
    """h / r > 1: every instance is a candidate and a random ceil(N h) of them is masked (the reference's cap;
    tests/test_parity_mhim.py pins the exact sets)."""
    m = build_model("mhim", in_dim=8, mask_high=0.3, mask_high_random=0.2, mask_high_cosine=False, rsm_ratio=0.0)
    score = torch.arange(50.0)
    sets = set()
    for seed in range(5):
        torch.manual_seed(seed)
        kept, _ = m.select(score)
        assert len(kept) == 50 - 15
        sets.add(tuple(kept.tolist()))
    assert len(sets) > 1  # random, not the top 15


@pytest.mark.parametrize("name,params,key", [
    ("abmil", {"attn_dim": 0}, "attn_dim"), ("abmil", {"dropout": -0.1}, "dropout"),
    ("transmil", {"landmarks": 0}, "landmarks"), ("transmil", {"attn_dropout": 1.0}, "attn_dropout"),
])
def test_baseline_ranges(name, params, key):
    with pytest.raises(ValueError, match=rf"model '{name}': {key} = .* out of range"):
        build_model(name, in_dim=8, **params)


def test_option_names_are_checked():
    with pytest.raises(ValueError, match="act must be one of"):
        build_model("abmil", in_dim=8, act="tanh")
    with pytest.raises(ValueError, match="attention_act must be one of"):
        build_model("abmil", in_dim=8, attention_act="sigmoid")
    with pytest.raises(ValueError, match="padding must be one of"):
        build_model("transmil", in_dim=8, padding="square")


def test_paper_config_mhim_methods_wrap_exactly_their_teachers_config():
    """config/paper.yaml: each MHIM method's wrapped baseline (baseline + baseline_params) is the configuration of
    its teacher method (init_teacher refuses any difference at train time); AB-MIL / TransMIL MHIM methods wrap
    the reference's internal attn / selfattn variants with the GELU projection."""
    import copy
    from pathlib import Path

    import yaml

    from hardmil.models import model_config

    methods = yaml.safe_load((Path(__file__).parents[1] / "config" / "paper.yaml").read_text())["methods"]
    seen = set()
    for name, m in methods.items():
        if m["model"] != "mhim":
            continue
        cfg = model_config("mhim", **copy.deepcopy(m["params"]))
        wrapped = model_config(cfg.baseline, **cfg.baseline_params)
        if cfg.baseline == "abmil":
            assert (wrapped.act, wrapped.attention_act, wrapped.attention_bias) == ("gelu", "relu", False), name
        if cfg.baseline == "transmil":
            assert (wrapped.act, wrapped.padding) == ("gelu", "ppeg"), name
        if cfg.baseline == "dsmil":  # the reference's MHIM-internal DSMIL (issue 25)
            assert (wrapped.act, wrapped.prediction) == ("gelu", "mean"), name
        if m.get("teacher"):
            t = methods[m["teacher"]]
            assert t["model"] == cfg.baseline, name
            assert model_config(t["model"], **t.get("params", {})) == wrapped, name
            seen.add(m["teacher"])
    assert {"abmil_mhim", "transmil_mhim", "dsmil_mhim"} <= seen


@pytest.mark.parametrize("name", ["abmil", "gabmil", "transmil", "mhim"])
def test_every_numeric_field_declares_its_range(name):
    from hardmil.models import MODELS
    from hardmil.models.base import field_range

    fields = dataclasses.fields(MODELS[name].config_class)
    numeric = [f for f in fields if isinstance(f.default, (int, float)) and not isinstance(f.default, bool)]
    assert numeric and all(field_range(f) is not None for f in numeric), [f.name for f in numeric
                                                                          if field_range(f) is None]


def test_transmil_initialisation_follows_the_reference():
    torch.manual_seed(0)
    standalone = build_model("transmil", in_dim=8, landmarks=4)
    selfattn = build_model("transmil", in_dim=8, landmarks=4, padding="ppeg")
    for m in (standalone, selfattn):
        assert torch.all(m.classifier.bias == 0) and torch.all(m.feature[0].bias == 0)
    assert standalone.cls_token.abs().max() < 1e-4 and selfattn.cls_token.std() > 0.5
    assert torch.all(standalone.ppeg.convs[0].bias == 0) and not torch.all(selfattn.ppeg.convs[0].bias == 0)
