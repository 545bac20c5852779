"""The model contract (hardmil.models.base): every registered model is a MILModel, the training hooks have
working defaults, the protocols say which baselines MHIM and the heatmaps can use, and no code outside the
models probes a model for its hooks with hasattr/getattr."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from hardmil.models import MODELS, build_model
from hardmil.models.base import EmbedHead, LinearHead, MaskableBaseline, MILModel, MILOutput

SRC = Path(__file__).resolve().parents[1] / "src" / "hardmil"
# the packages that call models (plus the registry); models/ itself may look at its own wrapped baselines
CALLERS = [SRC / d for d in ("train", "mining", "report", "eval")] + [SRC / "models" / "__init__.py"]
HOOKS = ({n for n in vars(MILModel) if not n.startswith("_")} | {"cfg", "embedding_groups", "student", "teacher"}
         | {n for p in (EmbedHead, MaskableBaseline, LinearHead) for n in vars(p) if not n.startswith("_")})


def probes(source: str) -> list[tuple[int, str]]:
    """(line, hook) of every ``hasattr(x, "hook")`` / ``getattr(x, "hook", ...)`` on a declared hook."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr")
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and node.args[1].value in HOOKS):
            found.append((node.lineno, node.args[1].value))
    return found


def test_probe_detector_finds_probing():
    snippet = 'if hasattr(model, "after_step"):\n    model.after_step()\nx = getattr(net, "needs_coords", False)\n'
    assert probes(snippet) == [(1, "after_step"), (3, "needs_coords")]
    assert probes('getattr(obj, "item")') == []


def test_no_hook_probing_outside_models():
    files = [f for p in CALLERS for f in ([p] if p.is_file() else sorted(p.rglob("*.py")))]
    assert len(files) > 10
    found = {f"{f.relative_to(SRC)}:{line}": hook for f in files for line, hook in probes(f.read_text())}
    assert not found, f"declare these hooks in hardmil.models.base instead of probing: {found}"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_is_a_mil_model(name):
    cls = MODELS[name]
    assert issubclass(cls, MILModel)
    net = build_model(name, in_dim=12, n_classes=2)
    assert isinstance(net, MILModel)
    for hook in ("set_schedule", "training_step", "after_step", "translate_params"):
        assert callable(getattr(net, hook))
    assert isinstance(net.needs_coords, bool) and isinstance(net.embedding_groups, int)


def test_declared_capabilities():
    assert {n for n, c in MODELS.items() if c.needs_coords} == {"mamba2d"}
    assert {n for n, c in MODELS.items() if c.training_step is not MILModel.training_step} == {"dtfd"}
    maskable = {n for n in MODELS if isinstance(build_model(n, in_dim=12, n_classes=2), MaskableBaseline)}
    assert {"abmil", "gabmil", "dsmil", "transmil"} <= maskable
    assert not {"meanmil", "maxmil", "mhim", "dtfd"} & maskable
    assert isinstance(build_model("abmil", in_dim=12, n_classes=2), LinearHead)
    assert not isinstance(build_model("transmil", in_dim=12, n_classes=2), LinearHead)
    assert build_model("dsmil", in_dim=12, n_classes=3).embedding_groups == 3
    assert build_model("abmil", in_dim=12, n_classes=3).embedding_groups == 1


def test_mhim_refuses_a_baseline_without_the_protocol():
    with pytest.raises(ValueError, match="cannot wrap 'meanmil'"):
        build_model("mhim", in_dim=12, n_classes=2, baseline="meanmil")


def test_default_training_step_backpropagates_bag_and_auxiliary_losses():
    torch.manual_seed(0)
    net = build_model("abmil", in_dim=6, n_classes=2).eval()  # no dropout: two passes must agree
    x, y = torch.randn(1, 5, 6), torch.tensor([1])
    out = net(x)
    aux = out.logits.pow(2).sum()
    out = MILOutput(logits=out.logits, aux_losses={"extra": aux})
    bag = torch.nn.functional.cross_entropy(out.logits, y)
    loss = net.training_step(out, bag)
    grads = [p.grad.clone() for p in net.parameters()]
    assert loss.item() == pytest.approx(bag.item() + aux.item())
    net.zero_grad()
    out2 = net(x)
    (torch.nn.functional.cross_entropy(out2.logits, y) + out2.logits.pow(2).sum()).backward()
    for g, p in zip(grads, net.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.set_schedule(10)
    net.after_step()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_translate_params_default_is_identity_and_mhim_flattens():
    assert MODELS["abmil"].translate_params({"hidden_dim": 8}) == {"hidden_dim": 8}
    assert MODELS["mhim"].translate_params is not MILModel.translate_params
