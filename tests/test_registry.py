import math

import pytest
import torch

from losscli.errors import UnknownNameError
from losscli.losses import LossSpecError, create_loss, get_loss_info, list_losses, register_loss
from losscli.losses import registry as reg
from losscli.losses.kinds import Family, Pred, Target


def _dummy(pred, target, *, scale: float = 1.0, reduction: str = "mean"):
    return scale * (pred - target).abs().mean()


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations inside a test do not leak into others."""
    monkeypatch.setattr(reg, "_REGISTRY", dict(reg._REGISTRY))
    monkeypatch.setattr(reg, "_ALIASES", dict(reg._ALIASES))


def _register(name, **kw):
    kw = {"family": Family.REGRESSION, "pred": Pred.VALUES, "target": Target.VALUES,
          "description": "d", "reference": "r", **kw}
    return register_loss(name, **kw)(_dummy)


def test_duplicate_name_and_alias_refused(scratch_registry):
    with pytest.raises(ValueError, match="already registered"):
        _register("mse")
    with pytest.raises(ValueError, match="already registered"):
        _register("my_new_loss", aliases=("l2",))  # l2 is mse's alias
    _register("mse", replace=True)  # a deliberate override is allowed
    assert get_loss_info("mse").fn is _dummy


def test_loss_without_reduction_keyword_refused(scratch_registry):
    with pytest.raises(TypeError, match="reduction"):
        register_loss("bad", family="regression", pred="values", target="values",
                      description="", reference="")(lambda p, t: p)


def test_unknown_loss_suggests_close_matches():
    with pytest.raises(UnknownNameError) as info:
        create_loss("foca")
    assert "focal" in info.value.suggestions
    assert "did you mean 'focal'" in str(info.value)


def test_unknown_parameter_names_the_right_one():
    with pytest.raises(UnknownNameError, match="did you mean 'gamma'"):
        create_loss("focal:gama=2")


@pytest.mark.parametrize(
    "spec, key",
    [
        ("ce", "ce"),
        ("cross_entropy", "ce"),  # aliases resolve to the canonical name
        ("focal:gamma=2", "focal:gamma=2"),
        ("focal:gamma=2.0", "focal:gamma=2"),  # same value, same key
        ("focal:alpha=[0.25,0.75],gamma=1", "focal:alpha=[0.25,0.75],gamma=1"),
        (" 0.5*ce + focal:gamma=1e+0 ", "0.5*ce+focal:gamma=1"),  # exponent '+' is no split
        ("ce:label_smoothing=0.1,ignore_index=3", "ce:ignore_index=3,label_smoothing=0.1"),
    ],
)
def test_spec_parsing_and_canonical_key(spec, key):
    assert create_loss(spec).key == key


def test_compound_is_weighted_sum():
    pred, target = torch.randn(6, 4), torch.randint(0, 4, (6,))
    compound = create_loss("0.3*ce+2*focal:gamma=1")(pred, target)
    expected = 0.3 * create_loss("ce")(pred, target) + 2 * create_loss("focal:gamma=1")(
        pred, target)
    torch.testing.assert_close(compound, expected)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "empty"),
        ("ce+", "empty term"),
        ("ce:", "missing parameters"),
        ("focal:gamma", "key=value"),
        ("focal:gamma=", "key=value"),
        ("focal:gamma=1,gamma=2", "given twice"),
        ("x*ce", "bad coefficient"),
        ("inf*ce", "finite"),
        ("focal:alpha=[0.1,0.2", "unbalanced"),
        ("focal:gamma=abc", "expects a number"),
        ("ce:ignore_index=1.5", "expects an integer"),
        ("mse:beta=1", "takes no parameters"),
        ("ce!", "bad loss name"),
    ],
)
def test_malformed_specs(spec, message):
    with pytest.raises(LossSpecError, match=message):
        create_loss(spec)


def test_every_loss_has_metadata():
    infos = list_losses()
    assert {"ce", "nll", "label_smoothing", "focal", "bce", "bce_logits", "mse", "l1",
            "smooth_l1"} <= {i.name for i in infos}
    for info in infos:
        assert info.description and info.reference
        assert "reduction" not in info.params


def test_plugin_file_registers_a_loss(tmp_path, scratch_registry):
    plugin = tmp_path / "my_losses.py"
    plugin.write_text(
        "from losscli.losses import register_loss\n"
        "@register_loss('plugin_l1', family='regression', pred='values', target='values',\n"
        "               description='test plugin', reference='none')\n"
        "def plugin_l1(pred, target, *, reduction='mean'):\n"
        "    return (pred - target).abs().mean()\n"
    )
    reg.load_plugin(str(plugin))
    info = get_loss_info("plugin_l1")
    assert info.source != "losscli"
    assert math.isclose(create_loss("plugin_l1")(torch.ones(3), torch.zeros(3)).item(), 1.0)


def test_entry_point_plugins_are_loaded(monkeypatch, scratch_registry):
    calls = []

    class FakeEntryPoint:
        def load(self):
            return lambda: calls.append(_register("ep_loss"))

    monkeypatch.setattr(reg, "_ENTRY_POINTS_LOADED", False)
    monkeypatch.setattr(reg, "entry_points",
                        lambda group: [FakeEntryPoint()] if group == "losscli.losses" else [])
    create_loss("mse")  # any create_loss loads the entry points once
    assert calls and get_loss_info("ep_loss")
