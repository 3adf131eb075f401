"""Forward + backward time of our losses against a peer implementation of the same loss.

Each row runs our registered loss (through ``create_loss``) and its peer on the same inputs
at a realistic size, alternating ours/peer within every repeat in one process, and prints
the median of each, their ratio (ours / peer; > 1 means ours is slower) and the relative
gap between the two loss values (untimed: a peer labelled "speed only" or "no ..." computes
something else). Rows whose loss is not registered or whose peer package is not installed
are skipped. Peers: torch, torchvision, MONAI, segmentation_models_pytorch, kornia,
pytorch_msssim, torchmetrics.

    python benchmarks/losses.py --repeats 20
    python benchmarks/losses.py --only ce,dice,ssim --device cuda
    OMP_NUM_THREADS=1 python benchmarks/losses.py --clock cpu   # a machine busy with other work

To add a row, append a ``Row`` to ``ROWS``: our spec, an input size from ``SIZES``, the
peer's label and a factory returning ``peer(pred, target) -> scalar``, plus an optional
untimed ``prepare`` converting the inputs to the peer's convention.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from losscli.errors import UnknownNameError
from losscli.losses import create_loss

Pair = tuple[Tensor, Tensor]


# --------------------------------------------------------------------------- inputs


def _classification(g: torch.Generator, log_probs: bool = False) -> Pair:
    x = torch.randn(256, 1000, generator=g)
    return (x.log_softmax(1) if log_probs else x), torch.randint(1000, (256,), generator=g)


def _dense_binary(g: torch.Generator, probs: bool = False) -> Pair:
    """SSD-size multi-label scores: 8 images x 8,732 anchors x 21 classes, ~5% positive."""
    x = 2 * torch.randn(8, 8732, 21, generator=g)
    t = (torch.rand(8, 8732, 21, generator=g) < 0.05).float()
    return (torch.sigmoid(x) if probs else x), t


def _regression(g: torch.Generator) -> Pair:
    """Box offsets of every anchor: 8 x 8,732 x 4."""
    return torch.randn(8, 8732, 4, generator=g), torch.randn(8, 8732, 4, generator=g)


def _values_var(g: torch.Generator) -> Pair:
    mean, target = _regression(g)
    var = 0.1 + torch.rand(8, 8732, 4, generator=g)
    return torch.stack([mean, var], dim=-1), target


def _boxes(g: torch.Generator) -> Pair:
    """8 x 8,732 matched box pairs, xyxy."""
    n = 8 * 8732
    xy, wh = 100 * torch.rand(n, 2, generator=g), 5 + 50 * torch.rand(n, 2, generator=g)
    t_xy = xy + 5 * torch.randn(n, 2, generator=g)
    t_wh = wh * torch.exp(0.3 * torch.randn(n, 2, generator=g))
    return torch.cat([xy, xy + wh], 1), torch.cat([t_xy, t_xy + t_wh], 1)


def _segmentation(g: torch.Generator, log_probs: bool = False) -> Pair:
    x = torch.randn(16, 4, 128, 128, generator=g)
    t = torch.randint(4, (16, 128, 128), generator=g)
    return (x.log_softmax(1) if log_probs else x), t


def _binary_segmentation(g: torch.Generator) -> Pair:
    x = torch.randn(16, 1, 128, 128, generator=g)
    return x, (torch.rand(16, 128, 128, generator=g) < 0.3).float()


def _images(g: torch.Generator, side: int = 128) -> Pair:
    x = torch.rand(16, 3, side, side, generator=g)
    return x, (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)


SIZES: dict[str, tuple[str, Callable[[torch.Generator], Pair]]] = {
    "cls": ("256x1000", _classification),
    "cls_logp": ("256x1000 log-probs", lambda g: _classification(g, log_probs=True)),
    "det_cls": ("8x8732x21", _dense_binary),
    "det_probs": ("8x8732x21 probs", lambda g: _dense_binary(g, probs=True)),
    "det_box": ("8x8732x4", _regression),
    "det_box_var": ("8x8732x4 (+var)", _values_var),
    "boxes": ("69856 boxes", _boxes),
    "seg": ("16x4x128x128", _segmentation),
    "seg_logp": ("16x4x128x128 log-probs", lambda g: _segmentation(g, log_probs=True)),
    "seg_bin": ("16x1x128x128", _binary_segmentation),
    "img": ("16x3x128x128", _images),
    "img192": ("16x3x192x192", lambda g: _images(g, side=192)),  # MS-SSIM needs > 160 px
}


# ----------------------------------------------------------------------------- peers


def _identity(pred: Tensor, target: Tensor) -> Pair:
    return pred, target


def _channel_target(pred: Tensor, target: Tensor) -> Pair:
    return pred, target.unsqueeze(1)  # MONAI's [N, 1, H, W] label map


def _tv(name: str) -> Callable[[], Callable]:
    def make() -> Callable:
        import torchvision.ops as ops

        fn = getattr(ops, name)
        return lambda p, t: fn(p, t, reduction="mean")

    return make


def _monai(cls: str, **kwargs) -> Callable[[], Callable]:
    def make() -> Callable:
        import monai.losses

        try:
            return getattr(monai.losses, cls)(softmax=True, to_onehot_y=True, **kwargs)
        except TypeError as exc:  # e.g. ignore_index, new in MONAI 1.5: skip the row
            raise ImportError(f"monai.losses.{cls}({', '.join(kwargs)})",
                              name=f"a MONAI with {', '.join(kwargs)}") from exc

    return make


def _smp_dice() -> Callable:
    from segmentation_models_pytorch.losses import DiceLoss

    # the peer with ignore_index support; it zeroes classes absent from the target, so its
    # values differ from ours (MONAI's convention): a speed peer only
    return DiceLoss("multiclass", from_logits=True, ignore_index=-100)


def _kornia(name: str, scale: float = 1.0, **kwargs) -> Callable[[], Callable]:
    """``scale * kornia.losses.<name>(pred, target, **kwargs)``."""

    def make() -> Callable:
        import kornia.losses

        fn = getattr(kornia.losses, name)
        if scale == 1.0:
            return lambda p, t: fn(p, t, **kwargs)
        return lambda p, t: scale * fn(p, t, **kwargs)

    return make


def _msssim(name: str) -> Callable[[], Callable]:
    def make() -> Callable:
        import pytorch_msssim

        fn = getattr(pytorch_msssim, name)
        return lambda p, t: 1 - fn(p, t, data_range=1.0)

    return make


def _torchmetrics_psnr() -> Callable:
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return lambda p, t: -peak_signal_noise_ratio(p, t, data_range=1.0, dim=(1, 2, 3))


def _gaussian_nll(p: Tensor, t: Tensor) -> Tensor:
    return F.gaussian_nll_loss(p[..., 0], t, p[..., 1])


@dataclass(frozen=True)
class Row:
    spec: str  # our loss
    size: str  # key of SIZES
    peer: str  # label
    make_peer: Callable[[], Callable[[Tensor, Tensor], Tensor]]  # may raise ImportError
    prepare: Callable[[Tensor, Tensor], Pair] = _identity  # untimed, peer side only


ROWS: list[Row] = [
    Row("ce", "cls", "F.cross_entropy", lambda: F.cross_entropy),
    Row("nll", "cls_logp", "F.nll_loss", lambda: F.nll_loss),
    Row("ce", "seg", "F.cross_entropy", lambda: F.cross_entropy),
    Row("nll", "seg_logp", "F.nll_loss", lambda: F.nll_loss),
    Row("hinge", "cls", "F.multi_margin_loss", lambda: F.multi_margin_loss),
    Row("bce", "det_probs", "F.binary_cross_entropy", lambda: F.binary_cross_entropy),
    Row("bce_logits", "det_cls", "F.binary_cross_entropy_with_logits",
        lambda: F.binary_cross_entropy_with_logits),
    Row("sigmoid_focal", "det_cls", "torchvision sigmoid_focal_loss", _tv("sigmoid_focal_loss")),
    Row("mse", "det_box", "F.mse_loss", lambda: F.mse_loss),
    Row("l1", "det_box", "F.l1_loss", lambda: F.l1_loss),
    Row("smooth_l1", "det_box", "F.smooth_l1_loss", lambda: F.smooth_l1_loss),
    Row("huber", "det_box", "F.huber_loss", lambda: F.huber_loss),
    Row("gaussian_nll", "det_box_var", "F.gaussian_nll_loss", lambda: _gaussian_nll),
    Row("giou", "boxes", "torchvision generalized_box_iou_loss",
        _tv("generalized_box_iou_loss")),
    Row("diou", "boxes", "torchvision distance_box_iou_loss", _tv("distance_box_iou_loss")),
    Row("ciou", "boxes", "torchvision complete_box_iou_loss", _tv("complete_box_iou_loss")),
    # MONAI with ignore_index masks like ours (same semantics); without it, it skips the
    # mask (what the mask costs us: results/benchmarks/losses-cpu.txt)
    Row("dice", "seg", "monai DiceLoss(ignore_index)", _monai("DiceLoss", ignore_index=-100),
        _channel_target),
    Row("dice", "seg", "monai DiceLoss: no ignore_index", _monai("DiceLoss"), _channel_target),
    Row("dice", "seg", "smp DiceLoss(ignore_index)", _smp_dice),
    # kornia: eps on the denominator only (ours smooth_nr = smooth_dr = 1e-5: the same float
    # here); macro averages the classes present in the image (all are, here)
    Row("dice", "seg", "kornia dice_loss(macro, eps=1e-5)",
        _kornia("dice_loss", average="macro", eps=1e-5)),
    # kornia's default pools the classes of an image into one Dice: other values, speed only
    Row("dice", "seg", "kornia dice_loss(micro): speed only", _kornia("dice_loss")),
    Row("jaccard", "seg", "monai DiceLoss(jaccard, ignore_index)",
        _monai("DiceLoss", jaccard=True, ignore_index=-100), _channel_target),
    Row("jaccard", "seg", "monai DiceLoss(jaccard): no ignore_index",
        _monai("DiceLoss", jaccard=True), _channel_target),
    Row("tversky", "seg", "monai TverskyLoss(ignore_index)",
        _monai("TverskyLoss", ignore_index=-100), _channel_target),
    Row("tversky", "seg", "monai TverskyLoss: no ignore_index", _monai("TverskyLoss"),
        _channel_target),
    Row("tversky", "seg", "kornia tversky_loss(eps=1e-5)",
        _kornia("tversky_loss", alpha=0.5, beta=0.5, eps=1e-5)),
    # kornia's mean divides by C x pixels: times C it is ours (mean over pixels)
    Row("focal", "cls", "kornia focal_loss x C", _kornia("focal_loss", 1000, alpha=None,
                                                         reduction="mean")),
    Row("focal", "seg", "kornia focal_loss x C", _kornia("focal_loss", 4, alpha=None,
                                                         reduction="mean")),
    Row("lovasz:classes=all", "seg", "kornia lovasz_softmax_loss",
        _kornia("lovasz_softmax_loss")),
    Row("lovasz", "seg_bin", "kornia lovasz_hinge_loss", _kornia("lovasz_hinge_loss")),
    Row("dice_ce", "seg", "monai DiceCELoss: no ignore_index", _monai("DiceCELoss"),
        _channel_target),
    Row("ssim", "img", "pytorch_msssim ssim", _msssim("ssim")),
    Row("ms_ssim", "img192", "pytorch_msssim ms_ssim", _msssim("ms_ssim")),
    Row("psnr", "img", "torchmetrics PSNR", _torchmetrics_psnr),
]


# ---------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # a host sync, on purpose: the timer must see the work


CLOCKS: dict[str, Callable[[], float]] = {
    "wall": time.perf_counter,
    # CPU seconds of this process: time spent waiting for a core that other work holds does
    # not count (CPU device only; a GPU kernel's time is not the host's CPU time)
    "cpu": time.process_time,
}


def _fwd_bwd_ms(fn: Callable, pred: Tensor, target: Tensor, device: torch.device,
                clock: Callable[[], float] = time.perf_counter) -> float:
    _sync(device)
    start = clock()
    loss = fn(pred, target)
    torch.autograd.grad(loss, pred)
    _sync(device)
    return 1000 * (clock() - start)


def _relative_gap(ours: Tensor, theirs: Tensor) -> float:
    """``|ours - theirs| / |theirs|`` of the two losses' values (untimed)."""
    a, b = float(ours.detach().double()), float(theirs.detach().double())
    return abs(a - b) / max(abs(b), 1e-30)


def time_row(
    row: Row, device: torch.device, repeats: int, warmup: int, stat: Callable = statistics.median,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[float, float, float]:
    """``stat`` (median) of fwd+bwd ms of (ours, peer), alternating which goes first in
    each repeat, and the relative gap between the two loss values."""
    ours = create_loss(row.spec)
    peer = row.make_peer()
    pred, target = SIZES[row.size][1](torch.Generator().manual_seed(0))
    pred, target = pred.to(device).requires_grad_(), target.to(device)
    peer_pred, peer_target = row.prepare(pred, target)
    calls = [(ours, pred, target), (peer, peer_pred, peer_target)]
    gap = _relative_gap(ours(pred, target), peer(peer_pred, peer_target))
    for _ in range(warmup):
        for fn, p, t in calls:
            _fwd_bwd_ms(fn, p, t, device, clock)
    times: list[list[float]] = [[], []]
    for r in range(repeats):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            fn, p, t = calls[i]
            times[i].append(_fwd_bwd_ms(fn, p, t, device, clock))
    return stat(times[0]), stat(times[1]), gap


def run(
    rows: list[Row], device: torch.device, repeats: int, warmup: int, stat: Callable,
    clock: Callable[[], float] = time.perf_counter,
) -> list[tuple]:
    """One ``(spec, size, peer, ours ms, peer ms, value gap, note)`` per row."""
    results = []
    for row in rows:
        label = SIZES[row.size][0]
        try:
            create_loss(row.spec)
            ours_ms, peer_ms, gap = time_row(row, device, repeats, warmup, stat, clock)
        except UnknownNameError:
            results.append((row.spec, label, row.peer, None, None, None, "not registered"))
            continue
        except ImportError as exc:
            results.append((row.spec, label, row.peer, None, None, None,
                            f"peer missing: {exc.name}"))
            continue
        results.append((row.spec, label, row.peer, ours_ms, peer_ms, gap, ""))
    return results


def render(results: list[tuple], title: str) -> None:
    header = ("loss", "size", "peer", "ours ms", "peer ms", "ratio", "value gap")
    body = []
    for spec, size, peer, ours, theirs, gap, note in results:
        if ours is None:
            body.append((spec, size, peer, "-", "-", note, ""))
        else:
            body.append((spec, size, peer, f"{ours:.2f}", f"{theirs:.2f}", f"{ours / theirs:.2f}",
                         f"{gap:.0e}"))
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(r[i])) for r in (header, *body)) for i in range(len(header))]
        print(title)
        for r in (header, *body):
            print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
        return
    table = Table(title=title)
    for i, name in enumerate(header):
        table.add_column(name, justify="right" if i >= 3 else "left", no_wrap=True)
    for r in body:
        table.add_row(*r)
    console = Console()
    Console(width=max(console.width, 130) if not console.is_terminal else None).print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per side first")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--only", default="", help="comma-separated loss specs to run")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--stat", choices=("median", "min"), default="median",
                        help="min is steadier on a machine shared with other work")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="cpu: this process's CPU time, steadier on a busy machine (CPU only)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.threads < 0:
        parser.error("--repeats must be >= 1, --warmup and --threads >= 0")
    device = torch.device(args.device)
    if args.clock == "cpu" and device.type != "cpu":
        parser.error("--clock cpu times the host only: use it with --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    wanted = {s.strip() for s in args.only.split(",") if s.strip()}
    rows = [r for r in ROWS if not wanted or r.spec in wanted or r.spec.split(":")[0] in wanted]
    title = (f"loss forward+backward, {args.stat} of {args.repeats} interleaved repeats on "
             f"{device}, {args.clock} clock (torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads)")
    stat = statistics.median if args.stat == "median" else min
    render(run(rows, device, args.repeats, args.warmup, stat, CLOCKS[args.clock]), title)


if __name__ == "__main__":
    main()
