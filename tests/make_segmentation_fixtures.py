"""Record reference values for the segmentation losses (MONAI and segmentation_models_pytorch).

Run once, with ``monai`` and ``segmentation-models-pytorch`` installed::

    python tests/make_segmentation_fixtures.py

It writes ``tests/fixtures/segmentation_monai.json`` and ``segmentation_smp.json``: small
inputs from a fixed seed, and for every case the reference's loss and its gradient with
respect to the logits, so ``tests/test_losses_segmentation.py`` checks the equivalence in CI
without those packages. The same ``CASES`` table drives the live comparison there (with fresh
inputs) when the packages are installed. No weights are loaded.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

FIXTURES = Path(__file__).parent / "fixtures"
IGNORE = 255
SEED = 20240601
DIGITS = 10  # significant digits kept in the JSON

Reference = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Case:
    """``loss(pred, target, **params)`` must equal ``reference(pred, target)``."""

    id: str
    source: str  # "monai" | "smp": the package the reference needs
    inputs: str  # a key of INPUT_KINDS
    loss: str
    params: dict[str, Any] = field(default_factory=dict)
    reference: str = ""  # the reference expression, as text (built by ``reference_fn``)


# --------------------------------------------------------------------------- inputs


def make_inputs(kind: str, seed: int, n: int = 2, c: int = 3, size=(4, 4)) -> tuple[Tensor, Tensor]:
    """Logits (float64, rounded to 1e-4 so the JSON holds them exactly) and targets.

    Kinds: ``mc`` (index targets), ``mc_ignore`` (some pixels = IGNORE, one image entirely),
    ``mc_absent`` (class ``c - 1`` absent from image 0, confidently not predicted there),
    ``bin`` ({0, 1} float mask, one channel), ``bin_ignore`` (some pixels IGNORE),
    ``bin_empty`` (image 0 has an empty mask).
    """
    g = torch.Generator().manual_seed(seed)
    channels = 1 if kind.startswith("bin") else c
    pred = (2 * torch.randn((n, channels, *size), generator=g, dtype=torch.float64))
    pred = torch.round(pred * 1e4) / 1e4
    if channels == 1:
        target = torch.bernoulli(torch.full((n, *size), 0.5, dtype=torch.float64), generator=g)
    else:
        target = torch.randint(c, (n, *size), generator=g)
    holes = torch.rand((n, *size), generator=g) < 0.3
    if kind.endswith("_ignore"):
        target = torch.where(holes, torch.full_like(target, IGNORE), target)
        if channels > 1:
            target[-1] = IGNORE  # a fully ignored image
    elif kind == "mc_absent":
        target[0] = torch.where(target[0] == c - 1, torch.zeros_like(target[0]), target[0])
        pred[0, c - 1] = -12.0
    elif kind == "bin_empty":
        target[0] = 0
    return pred, target


INPUT_KINDS = ("mc", "mc_ignore", "mc_absent", "bin", "bin_ignore", "bin_empty")


# --------------------------------------------------------------------------- references


def _monai(expr: str) -> Reference:
    import monai.losses as ml  # noqa: F401  (used by eval)

    def ref(pred: Tensor, target: Tensor) -> Tensor:
        y = target.unsqueeze(1)  # MONAI wants [N, 1, *] labels or masks
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # single-channel notices
            return eval(expr, {"ml": ml, "x": pred, "y": y, "C": pred.shape[1]})

    return ref


def _smp(expr: str) -> Reference:
    import segmentation_models_pytorch.losses as sl
    from segmentation_models_pytorch.losses import lovasz

    def ref(pred: Tensor, target: Tensor) -> Tensor:
        # smp's Lovász casts to float32 internally; so does the whole reference
        x, y = pred.float(), target.float() if pred.shape[1] == 1 else target
        if pred.shape[1] == 1:
            y = y.unsqueeze(1)
        return eval(expr, {"sl": sl, "lovasz": lovasz, "x": x, "y": y})

    return ref


def reference_fn(case: Case) -> Reference:
    return (_monai if case.source == "monai" else _smp)(case.reference)


_M_DICE = "ml.DiceLoss(softmax=True, to_onehot_y=True, {})(x, y)"
_M_BDICE = "ml.DiceLoss(sigmoid=True, {})(x, y)"


def _monai_cases() -> list[Case]:
    cases = []
    for ib in (True, False):
        for batch in (False, True):
            kw = f"include_background={ib}, batch={batch}"
            p = {"include_background": ib, "batch": batch}
            cases += [
                Case(f"dice-ib{ib:d}-b{batch:d}", "monai", "mc", "dice", p, _M_DICE.format(kw)),
                Case(f"jaccard-ib{ib:d}-b{batch:d}", "monai", "mc", "jaccard", p,
                     _M_DICE.format(kw + ", jaccard=True")),
                Case(f"dice_ce-ib{ib:d}-b{batch:d}", "monai", "mc", "dice_ce", p,
                     f"ml.DiceCELoss(softmax=True, to_onehot_y=True, {kw})(x, y)"),
            ]
    return cases + [
        Case("dice-smooth1", "monai", "mc", "dice", {"smooth_nr": 1.0, "smooth_dr": 1.0},
             _M_DICE.format("smooth_nr=1.0, smooth_dr=1.0")),
        Case("dice-smooth0", "monai", "mc", "dice", {"smooth_nr": 0.0, "smooth_dr": 0.0},
             _M_DICE.format("smooth_nr=0.0, smooth_dr=0.0")),
        Case("dice-ignore", "monai", "mc_ignore", "dice", {"ignore_index": IGNORE},
             _M_DICE.format(f"ignore_index={IGNORE}")),
        Case("dice-ignore-nobg-batch", "monai", "mc_ignore", "dice",
             {"ignore_index": IGNORE, "include_background": False, "batch": True},
             _M_DICE.format(f"ignore_index={IGNORE}, include_background=False, batch=True")),
        Case("dice-absent", "monai", "mc_absent", "dice", {}, _M_DICE.format("")),
        Case("jaccard-absent-nobg", "monai", "mc_absent", "jaccard",
             {"include_background": False},
             _M_DICE.format("jaccard=True, include_background=False")),
        Case("tversky", "monai", "mc", "tversky", {},
             "ml.TverskyLoss(softmax=True, to_onehot_y=True)(x, y)"),
        Case("tversky-a.3-b.7-nobg-batch", "monai", "mc", "tversky",
             {"alpha": 0.3, "beta": 0.7, "include_background": False, "batch": True},
             "ml.TverskyLoss(softmax=True, to_onehot_y=True, alpha=0.3, beta=0.7, "
             "include_background=False, batch=True)(x, y)"),
        Case("tversky-ignore", "monai", "mc_ignore", "tversky", {"ignore_index": IGNORE},
             f"ml.TverskyLoss(softmax=True, to_onehot_y=True, ignore_index={IGNORE})(x, y)"),
        Case("focal_tversky", "monai", "mc", "focal_tversky", {},
             "(ml.TverskyLoss(softmax=True, to_onehot_y=True, alpha=0.3, beta=0.7, "
             "reduction='none')(x, y) ** 0.75).mean()"),
        Case("focal_tversky-g2-batch", "monai", "mc", "focal_tversky",
             {"gamma": 2.0, "alpha": 0.5, "beta": 0.5, "batch": True},
             "(ml.TverskyLoss(softmax=True, to_onehot_y=True, batch=True, "
             "reduction='none')(x, y) ** 2).mean()"),
        Case("dice_ce-lambdas", "monai", "mc", "dice_ce", {"lambda_dice": 0.3, "lambda_ce": 1.7},
             "ml.DiceCELoss(softmax=True, to_onehot_y=True, lambda_dice=0.3, "
             "lambda_ce=1.7)(x, y)"),
        Case("dice_focal", "monai", "mc", "dice_focal", {},
             "ml.DiceLoss(softmax=True, to_onehot_y=True)(x, y) + C * ml.FocalLoss("
             "to_onehot_y=True, use_softmax=True)(x, y)"),
        Case("dice_focal-g.5-l", "monai", "mc", "dice_focal",
             {"gamma": 0.5, "lambda_dice": 2.0, "lambda_focal": 0.5},
             "2.0 * ml.DiceLoss(softmax=True, to_onehot_y=True)(x, y) + 0.5 * C * ml.FocalLoss("
             "to_onehot_y=True, use_softmax=True, gamma=0.5)(x, y)"),
        # binary (one channel, sigmoid)
        Case("bin-dice", "monai", "bin", "dice", {}, _M_BDICE.format("")),
        Case("bin-dice-batch", "monai", "bin", "dice", {"batch": True},
             _M_BDICE.format("batch=True")),
        Case("bin-dice-ignore", "monai", "bin_ignore", "dice", {"ignore_index": IGNORE},
             _M_BDICE.format(f"ignore_index={IGNORE}")),
        Case("bin-dice-empty", "monai", "bin_empty", "dice", {}, _M_BDICE.format("")),
        Case("bin-jaccard", "monai", "bin", "jaccard", {}, _M_BDICE.format("jaccard=True")),
        Case("bin-tversky", "monai", "bin", "tversky", {"alpha": 0.7, "beta": 0.3},
             "ml.TverskyLoss(sigmoid=True, alpha=0.7, beta=0.3)(x, y)"),
        Case("bin-dice_ce", "monai", "bin", "dice_ce", {}, "ml.DiceCELoss(sigmoid=True)(x, y)"),
        Case("bin-dice_focal", "monai", "bin", "dice_focal", {},
             "ml.DiceFocalLoss(sigmoid=True)(x, y)"),
        Case("bin-dice_focal-g.5-batch", "monai", "bin", "dice_focal",
             {"gamma": 0.5, "batch": True},
             "ml.DiceFocalLoss(sigmoid=True, gamma=0.5, batch=True)(x, y)"),
    ]


def _smp_cases() -> list[Case]:
    cases = []
    for batch in (False, True):
        pi = not batch
        cases += [
            Case(f"lovasz-b{batch:d}", "smp", "mc", "lovasz", {"batch": batch},
                 f"sl.LovaszLoss('multiclass', per_image={pi})(x, y)"),
            Case(f"lovasz-absent-b{batch:d}", "smp", "mc_absent", "lovasz", {"batch": batch},
                 f"sl.LovaszLoss('multiclass', per_image={pi})(x, y)"),
            Case(f"lovasz-all-b{batch:d}", "smp", "mc_absent", "lovasz",
                 {"batch": batch, "classes": "all"},
                 f"lovasz._lovasz_softmax(x.softmax(1), y, classes='all', per_image={pi})"),
            Case(f"bin-lovasz-b{batch:d}", "smp", "bin", "lovasz", {"batch": batch},
                 f"sl.LovaszLoss('binary', per_image={pi})(x, y)"),
            Case(f"bin-lovasz-empty-b{batch:d}", "smp", "bin_empty", "lovasz", {"batch": batch},
                 f"sl.LovaszLoss('binary', per_image={pi})(x, y)"),
            Case(f"bin-lovasz-ignore-b{batch:d}", "smp", "bin_ignore", "lovasz",
                 {"batch": batch, "ignore_index": IGNORE},
                 f"sl.LovaszLoss('binary', per_image={pi}, ignore_index={IGNORE})(x, y)"),
        ]
    # smp's multi-class Lovász with ignore_index breaks on a fully ignored image, so the
    # ignore case uses the batch-pooled form only.
    cases.append(Case("lovasz-ignore-b1", "smp", "mc_ignore", "lovasz",
                      {"batch": True, "ignore_index": IGNORE},
                      f"sl.LovaszLoss('multiclass', ignore_index={IGNORE})(x, y)"))
    # smp pools over the batch, uses one ``smooth`` s on both sides of tp / (tp + a fp + b fn):
    # Dice/Jaccard then equal ours with smooth 2s; all classes are present in ``mc``.
    both = {"batch": True, "smooth_nr": 2.0, "smooth_dr": 2.0}
    return cases + [
        Case("smp-dice", "smp", "mc", "dice", both, "sl.DiceLoss('multiclass', smooth=1.0)(x, y)"),
        Case("smp-jaccard", "smp", "mc", "jaccard", both,
             "sl.JaccardLoss('multiclass', smooth=1.0)(x, y)"),
        Case("smp-tversky", "smp", "mc", "tversky",
             {"batch": True, "smooth_nr": 1.0, "smooth_dr": 1.0, "alpha": 0.3, "beta": 0.7},
             "sl.TverskyLoss('multiclass', smooth=1.0, alpha=0.3, beta=0.7)(x, y)"),
        # smp raises the class mean to gamma; with one channel that is per class, as ours
        Case("smp-bin-focal_tversky", "smp", "bin", "focal_tversky",
             {"batch": True, "smooth_nr": 1.0, "smooth_dr": 1.0},
             "sl.TverskyLoss('binary', smooth=1.0, alpha=0.3, beta=0.7, gamma=0.75)(x, y)"),
    ]


CASES: list[Case] = _monai_cases() + _smp_cases()


# --------------------------------------------------------------------------- writing


def evaluate(case: Case, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """The reference's loss and its gradient with respect to ``pred`` (float64)."""
    x = pred.detach().clone().requires_grad_()
    loss = reference_fn(case)(x, target)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach().double(), grad.double()


def _round(t: Tensor) -> Any:
    return json.loads(json.dumps(t.tolist()), parse_float=lambda s: float(f"{float(s):.{DIGITS}g}"))


def _write(source: str, versions: dict[str, str]) -> Path:
    inputs = {k: make_inputs(k, SEED + i) for i, k in enumerate(INPUT_KINDS)}
    rows = []
    used = set()
    for case in (c for c in CASES if c.source == source):
        loss, grad = evaluate(case, *inputs[case.inputs])
        used.add(case.inputs)
        rows.append({"id": case.id, "inputs": case.inputs, "loss": case.loss,
                     "params": case.params, "reference": case.reference,
                     "expected": float(f"{float(loss):.{DIGITS + 2}g}"), "grad": _round(grad)})
    doc = {
        "about": "Generated by tests/make_segmentation_fixtures.py; do not edit by hand.",
        "versions": versions,
        "ignore_index": IGNORE,
        "inputs": {k: {"pred": inputs[k][0].tolist(), "target": inputs[k][1].tolist()}
                   for k in INPUT_KINDS if k in used},
        "cases": rows,
    }
    path = FIXTURES / f"segmentation_{source}.json"
    path.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    return path


def main() -> None:
    import monai
    import segmentation_models_pytorch as smp

    FIXTURES.mkdir(exist_ok=True)
    torch.use_deterministic_algorithms(True)
    base = {"torch": torch.__version__}
    for source, version in (("monai", monai.__version__), ("smp", smp.__version__)):
        path = _write(source, {**base, source: version})
        print(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
