"""Single-shot detection on a VOC-layout set (generated digits offline, or a real VOCdevkit).

The model is a small SSD (plain convs, no BatchNorm) predicting, for each of its default
boxes, 4 box offsets and ``C = K + 1`` class logits (0 = background): one output tensor
``[B, A, 4 + C]``. Ground truth is matched to the default boxes (IoU >= 0.5, plus the best
default box of every object) and encoded with variances (0.1, 0.2) once at load time, so
a training target is one tensor per image ``[A, 5]``: encoded offsets and the label.

A loss spec trains this output as follows (``bind``); every term is normalised by the
number of positive (matched) default boxes in the batch, at least 1:

- ``detection`` losses (``ssd``, ``focal_det``) take the whole output;
- ``classification`` losses (``ce``, ``focal``, ...) take the softmax logits ``[B*A, C]``
  of every non-ignored default box against its label (no hard-negative mining);
- ``binary`` losses (``sigmoid_focal``, ``bce_logits``, ...) take the object-class logits
  ``[B*A, K]`` (column 0 unused) against one-hot labels, background all zeros:
  RetinaNet's sigmoid classification;
- ``boxes`` losses (``iou``, ``giou``, ``diou``, ``ciou``) take the decoded boxes of the
  positive default boxes against their ground-truth boxes;
- ``regression`` losses (``smooth_l1``, ``l1``, ...) take the encoded offsets of the
  positive default boxes, summed over the 4 coordinates.

So ``sigmoid_focal+giou`` is RetinaNet's classification with a GIoU box loss, and
``focal+smooth_l1`` the softmax focal loss with SSD's box loss. A spec must classify (a
detection, classification or binary term) and localise (a detection, boxes or regression
term). Whatever the loss, the classifier starts from the prior 0.01 of RetinaNet (object
logits biased to ``-log(99)``): the model is the same for every loss. At evaluation the
scores are sigmoids of the object logits when the spec's classification is sigmoid-based
(binary terms, ``focal_det``), else softmax probabilities.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losscli.data.voc import (
    DIGIT_CLASSES,
    VOC_CLASSES,
    DetectionSplit,
    SynthConfig,
    read_voc,
    synthetic_voc_root,
)
from losscli.errors import UsageError
from losscli.jobs.base import Job, JobData, Objective, Option, Split, hold_out
from losscli.losses import Family, Loss, LossInfo, Pred, Target
from losscli.ops.anchors import anchors_per_location, default_boxes
from losscli.ops.boxcoder import build_targets, decode

__all__ = ["DetectionJob", "TinySSD", "mean_average_precision"]

VARIANCES = (0.1, 0.2)
_VAL_FRACTION = 0.15  # of the training images, held out for validation (split seed 0)
SCALES = (0.2, 0.4, 0.65, 0.9)  # default-box scales of the stride 8, 16, 32 maps (+ one)
ASPECT_RATIOS = (2.0,)
PRIOR = 0.01  # RetinaNet's initial object probability
_MAX_LOG_SCALE = math.log(1000.0 / 16)  # torchvision's clamp on decoded log-sizes
_SCORE_THRESH, _PRE_NMS, _NMS_IOU, _MAX_DET = 0.01, 100, 0.45, 50
_EVAL_BATCH = 256
_MEAN, _STD = 0.45, 0.25

# (pred, target) kinds each family's terms may declare here
_ACCEPTS = {
    Family.DETECTION: ({Pred.DETECTIONS}, {Target.DETECTIONS}),
    Family.CLASSIFICATION: ({Pred.LOGITS, Pred.LOG_PROBS, Pred.PROBS}, {Target.INDEX}),
    Family.BINARY: ({Pred.LOGITS, Pred.PROBS}, {Target.BINARY}),
    Family.BOXES: ({Pred.BOXES}, {Target.BOXES}),
    Family.REGRESSION: ({Pred.VALUES}, {Target.VALUES}),
}
_CLASSIFIES = {Family.DETECTION, Family.CLASSIFICATION, Family.BINARY}
_LOCALISES = {Family.DETECTION, Family.BOXES, Family.REGRESSION}
_SIGMOID_DETECTION = {"focal_det"}


def _conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.ReLU(inplace=True)]


class TinySSD(nn.Module):
    """A small SSD: a plain conv backbone (no BatchNorm) and 3x3 heads on three maps.

    Feature maps at strides 8, 16 and 32 (8x8, 4x4 and 2x2 for 64-px images), each with
    ``anchors_per_location`` default boxes per location. Output ``[B, A, 4 + C]``:
    offsets, then class logits, in ``default_boxes``' order. ~0.3M parameters.
    """

    def __init__(self, num_classes: int, anchors_per_loc: int, prior: float = PRIOR):
        super().__init__()
        self.num_outputs = 4 + num_classes
        self.stem = nn.Sequential(*_conv(3, 16, 2), *_conv(16, 32, 2), *_conv(32, 64, 2),
                                  *_conv(64, 64))
        self.down = nn.ModuleList([nn.Sequential(*_conv(64, 96, 2)),
                                   nn.Sequential(*_conv(96, 128, 2))])
        self.heads = nn.ModuleList(
            nn.Conv2d(ch, anchors_per_loc * self.num_outputs, 3, padding=1)
            for ch in (64, 96, 128))
        for head in self.heads:  # RetinaNet's init: small weights, object logits at the prior
            nn.init.normal_(head.weight, std=0.01)
            bias = torch.zeros(anchors_per_loc, self.num_outputs)
            bias[:, 5:] = -math.log((1 - prior) / prior)
            head.bias.data.copy_(bias.reshape(-1))

    def forward(self, x: Tensor) -> Tensor:
        maps = [self.stem(x)]
        for block in self.down:
            maps.append(block(maps[-1]))
        outs = [head(m).permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.num_outputs)
                for head, m in zip(self.heads, maps, strict=True)]
        return torch.cat(outs, dim=1)


def _parse_classes(text: str | None, vocabulary: tuple[str, ...] | None,
                   default: tuple[str, ...]) -> tuple[str, ...]:
    """``"a,b"`` → ``("a", "b")``; names outside ``vocabulary`` (when given) are refused."""
    if text is None:
        return default
    names = tuple(n.strip() for n in str(text).split(",") if n.strip())
    unknown = [n for n in names if vocabulary is not None and n not in vocabulary]
    if unknown or not names or len(set(names)) != len(names):
        allowed = f"from: {', '.join(vocabulary)}" if vocabulary else ""
        raise UsageError(f"--classes takes distinct comma-separated names {allowed}; "
                         f"got {text!r}")
    return names


class DetectionJob(Job):
    name = "det"
    aliases = ("detection", "voc")
    description = ("VOC-layout detection, small SSD; offline: generated MNIST-digit scenes "
                   "(1,500/300 images, 4 classes) read by torchvision's VOCDetection")
    model_name = "TinySSD (6 conv, 3 maps, 336 default boxes at 64 px)"
    metrics = ("map50", "map")
    primary_metric = "map50"
    families = frozenset(_ACCEPTS)
    preds = frozenset(p for ps, _ in _ACCEPTS.values() for p in ps)
    targets = frozenset(t for _, ts in _ACCEPTS.values() for t in ts)
    option_specs = (
        Option("data_dir", str, None, "folder holding a real VOCdevkit (VOCdevkit/VOC2007 or "
               "VOC2012); default: the generated digit scenes"),
        Option("download", bool, False, "let torchvision download VOC into data_dir (online "
               "only)"),
        Option("year", str, "2007", "VOC year with data_dir", choices=("2007", "2012")),
        Option("classes", str, None, "comma-separated classes: with data_dir any names in its "
               "XML (default: the 20 VOC classes); generated set: zero..nine (default "
               "zero,two,four,seven)"),
        Option("max_images", int, None, "training images at most (test: a fifth, at least 16)",
               low=1),
        Option("image_size", int, 64, "square input side in px", low=32, multiple_of=32),
        Option("max_objects", int, 4, "generated set: objects per image, 1 to N", low=1),
    )

    def __init__(self, **options):
        super().__init__(**options)
        self.image_size = self.option("image_size")
        # a real VOC-layout folder may hold any class names (the 20 VOC ones by default)
        vocab, default = ((None, VOC_CLASSES) if self.real
                          else (DIGIT_CLASSES, SynthConfig.classes))
        self.classes = _parse_classes(self.option("classes"), vocab, default)
        self.num_classes = len(self.classes) + 1  # with background
        sizes = [self.image_size // s for s in (8, 16, 32)]
        self.anchors = default_boxes(sizes, SCALES, ASPECT_RATIOS)  # [A, 4] cxcywh
        self._device_anchors: dict[torch.device, Tensor] = {}  # a cache of ``anchors``

    @property
    def real(self) -> bool:
        """A real VOC folder (``data_dir`` or ``download``), not the generated scenes."""
        return "data_dir" in self.options or bool(self.option("download"))

    def check_options(self) -> None:
        for key in ["max_objects"] if self.real else ["year"]:
            if key in self.options:
                raise UsageError(f"--{key.replace('_', '-')} applies only "
                                 f"{'without' if self.real else 'with'} --data-dir")

    # -- data ----------------------------------------------------------------------
    def _splits(self) -> tuple[DetectionSplit, DetectionSplit, str]:
        cap = self.option("max_images")
        test_cap = max(16, cap // 5) if cap else None
        if self.real:
            year = self.option("year")
            from losscli.data.mnist import cache_dir

            root = Path(self.option("data_dir") or cache_dir() / "data")
            download = self.option("download")
            train = read_voc(root, year, "train", self.classes, self.image_size, cap, download)
            test = read_voc(root, year, "val", self.classes, self.image_size, test_cap, download)
            return train, test, f"VOC{year} at {root}"
        cfg = SynthConfig(classes=self.classes, num_train=cap or 1500, num_val=test_cap or 300,
                          image_size=self.image_size, max_objects=self.option("max_objects"))
        root = synthetic_voc_root(cfg)
        train = read_voc(root, "2007", "train", self.classes, self.image_size)
        test = read_voc(root, "2007", "val", self.classes, self.image_size)
        return train, test, f"generated VOC-layout digits at {root}"

    def _encode(self, split: DetectionSplit) -> Tensor:
        """``[N, A, 5]``: encoded offsets and label (as a float) of every default box."""
        boxes = [b / self.image_size for b in split.boxes]  # normalised, as the anchors
        offsets, labels = build_targets(boxes, split.labels, self.anchors, 0.5, VARIANCES)
        return torch.cat([offsets, labels.unsqueeze(-1).float()], dim=-1)

    def load_data(self) -> JobData:
        train, test, where = self._splits()
        seen = set(torch.cat(train.labels).tolist())
        missing = [c for i, c in enumerate(self.classes, 1) if i not in seen]
        if missing:
            raise UsageError(f"no training object of class {', '.join(missing)} in {where}; "
                             f"--classes names the classes to detect")

        tr, va = hold_out(len(train), round(_VAL_FRACTION * len(train)), 0)
        data = JobData(self._split(train, tr), self._split(train, va),
                       self._split(test, torch.arange(len(test))), "")
        data.source = (f"{where}: {data.sizes()} images, {self.image_size} px, classes "
                       f"{','.join(self.classes)}")
        return data

    def _split(self, part: DetectionSplit, idx: Tensor) -> Split:
        """Images ``idx`` of ``part``: normalised inputs, encoded targets, and the
        ground-truth boxes and labels the mAP needs."""
        images = (part.images[idx].float() / 255.0 - _MEAN) / _STD
        rows = idx.tolist()
        picked = DetectionSplit(part.images[idx], [part.boxes[i] for i in rows],
                                [part.labels[i] for i in rows], [part.ids[i] for i in rows])
        return Split(images.contiguous(), self._encode(picked),
                     {"boxes": picked.boxes, "labels": picked.labels})

    def build_model(self, data: JobData) -> nn.Module:
        return TinySSD(self.num_classes, anchors_per_location(ASPECT_RATIOS))

    # -- adapter -------------------------------------------------------------------
    def _anchors_on(self, device: torch.device) -> Tensor:
        if device not in self._device_anchors:
            self._device_anchors[device] = self.anchors.to(device)
        return self._device_anchors[device]

    def _decode(self, offsets: Tensor) -> Tensor:
        """Boxes (normalised xyxy) from offsets, log-sizes clamped as torchvision does."""
        sizes = offsets[..., 2:].clamp(max=_MAX_LOG_SCALE / VARIANCES[1])
        return decode(torch.cat([offsets[..., :2], sizes], dim=-1),
                      self._anchors_on(offsets.device), VARIANCES)

    def adapt_pred(self, output: Tensor, kind: Pred) -> Tensor | tuple[Tensor, Tensor]:
        """``DETECTIONS``: ``(offsets, logits)``; ``LOGITS``/``LOG_PROBS``/``PROBS``: class
        scores ``[B*A, C]``; ``BOXES``: decoded boxes ``[B*A, 4]``; ``VALUES``: offsets
        ``[B*A, 4]``. (``bind`` masks boxes and offsets to the positives first.)"""
        offsets, logits = output[..., :4], output[..., 4:]
        flat = logits.reshape(-1, logits.shape[-1])
        if kind is Pred.DETECTIONS:
            return offsets, logits
        if kind is Pred.LOG_PROBS:
            return F.log_softmax(flat, dim=1)
        if kind is Pred.PROBS:
            return F.softmax(flat, dim=1)
        if kind is Pred.BOXES:
            return self._decode(offsets).reshape(-1, 4)
        if kind is Pred.VALUES:
            return offsets.reshape(-1, 4)
        return flat

    def adapt_target(self, target: Tensor, kind: Target, output: Tensor
                     ) -> Tensor | tuple[Tensor, Tensor]:
        """``DETECTIONS``: ``(offsets, labels)``; ``INDEX``: labels ``[B*A]`` (ignored → 0);
        ``BINARY``: one-hot object labels ``[B*A, K]``; ``BOXES``: ground-truth boxes
        ``[B*A, 4]``; ``VALUES``: encoded offsets ``[B*A, 4]``."""
        offsets, labels = target[..., :4], target[..., 4].long()
        if kind is Target.DETECTIONS:
            return offsets, labels
        if kind is Target.INDEX:
            return labels.clamp_min(0).reshape(-1)
        if kind is Target.BINARY:
            classes = torch.arange(1, output.shape[-1] - 4, device=labels.device)
            return (labels.reshape(-1, 1) == classes).to(output.dtype)  # no one_hot: no sync
        if kind is Target.BOXES:
            return self._decode(offsets).reshape(-1, 4)
        return offsets.reshape(-1, 4)

    def incompatibility(self, info: LossInfo) -> str | None:
        if info.family not in _ACCEPTS:
            return (f"{info.family} losses do not apply to {self.name} (it takes detection, "
                    "classification, binary, boxes and regression terms)")
        preds, targets = _ACCEPTS[info.family]
        if info.pred not in preds or info.target not in targets:
            return (f"{self.name} cannot give {info.pred} predictions with {info.target} "
                    f"targets to a {info.family} term")
        return self.unmet_needs(info)

    def bind(self, loss: Loss, data: JobData | None = None) -> Objective:
        """The detection objective of a spec (see the module docstring): each term sees the
        part of the output its family names, all normalised by the number of positives.
        ``det`` supplies no inputs (``supplies``), so ``data`` is not read."""
        families = [t.info.family for t in loss.terms]
        if not any(f in _CLASSIFIES for f in families) or \
                not any(f in _LOCALISES for f in families):
            raise ValueError(
                f"det: {loss.spec!r} needs a classification term (ssd, focal_det, ce, focal, "
                "sigmoid_focal, ...) and a box term (smooth_l1, l1, iou, giou, diou, ciou), "
                "or a whole detection loss; e.g. 'ssd' or 'sigmoid_focal+giou'")
        first = next(t.info for t in loss.terms if t.info.family in _CLASSIFIES)
        sigmoid = first.family is Family.BINARY or first.name in _SIGMOID_DETECTION
        terms = [(t.coef, t) for t in loss.terms]

        def objective(output: Tensor, target: Tensor) -> Tensor:
            labels = target[..., 4].long()
            positive = (labels > 0).reshape(-1)
            valid = (labels >= 0).reshape(-1).to(output.dtype)
            n_pos = positive.sum().to(output.dtype).clamp_min(1.0)  # a tensor: no sync
            total = None
            for coef, term in terms:
                value = self._term(term, output, target, positive, valid, n_pos)
                value = value if coef == 1.0 else coef * value
                total = value if total is None else total + value
            return total

        return Objective(objective, scores="sigmoid" if sigmoid else "softmax")

    def _term(self, term, output: Tensor, target: Tensor, positive: Tensor, valid: Tensor,
              n_pos: Tensor) -> Tensor:
        family, pk, tk = term.info.family, term.info.pred, term.info.target
        if family is Family.DETECTION:
            return term(self.adapt_pred(output, pk), self.adapt_target(target, tk, output))
        if family is Family.CLASSIFICATION:
            return term(self.adapt_pred(output, pk), self.adapt_target(target, tk, output),
                        weight=valid, avg_factor=n_pos)
        if family is Family.BINARY:
            logits = output[..., 5:].reshape(-1, output.shape[-1] - 5)
            pred = torch.sigmoid(logits) if pk is Pred.PROBS else logits
            return term(pred, self.adapt_target(target, tk, output),
                        weight=valid.unsqueeze(1), avg_factor=n_pos)
        # boxes and offsets: positives only; elsewhere the prediction is replaced by a
        # constant (zero offsets / the target), so no gradient and no overflow leaks in
        mask = positive.reshape(output.shape[:2]).unsqueeze(-1)
        if family is Family.BOXES:
            offsets = torch.where(mask, output[..., :4], torch.zeros_like(output[..., :4]))
            pred = self._decode(offsets).reshape(-1, 4)
        else:
            tgt_offsets = target[..., :4]
            pred = torch.where(mask, output[..., :4], tgt_offsets).reshape(-1, 4)
        weight = positive.to(output.dtype)
        return term(pred, self.adapt_target(target, tk, output),
                    weight=weight if family is Family.BOXES else weight.unsqueeze(1),
                    avg_factor=n_pos)

    # -- metrics -------------------------------------------------------------------
    def _candidates(self, output: Tensor, sigmoid: bool) -> Tensor:
        """Top-scoring (box, class) pairs per image, ``[N, k, 6]``: xyxy px, score, class.
        ``sigmoid``: object scores are sigmoids of their logits, else softmax probabilities."""
        logits = output[..., 4:]
        scores = (torch.sigmoid(logits[..., 1:]) if sigmoid
                  else F.softmax(logits, dim=-1)[..., 1:])
        k = scores.shape[-1]
        top, idx = scores.flatten(1).topk(min(_PRE_NMS, scores[0].numel()), dim=1)
        boxes = self._decode(output[..., :4]).clamp(0.0, 1.0) * self.image_size
        boxes = boxes.gather(1, (idx // k).unsqueeze(-1).expand(-1, -1, 4))
        return torch.cat([boxes, top.unsqueeze(-1), (idx % k + 1).unsqueeze(-1).float()], -1)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: Split, objective: Objective
                 ) -> dict[str, float]:
        from torchvision.ops import batched_nms

        sigmoid = objective.scores == "sigmoid"
        cands = torch.cat([self._candidates(model(x).float(), sigmoid)
                           for x in split.x.split(_EVAL_BATCH)]).cpu()  # the host sync
        preds = []
        for c in cands:  # NMS per image on the host
            c = c[c[:, 4] > _SCORE_THRESH]
            keep = batched_nms(c[:, :4], c[:, 4], c[:, 5].long(), _NMS_IOU)[:_MAX_DET]
            preds.append({"boxes": c[keep, :4], "scores": c[keep, 4],
                          "labels": c[keep, 5].long()})
        targets = [{"boxes": b, "labels": lab}
                   for b, lab in zip(split.extra["boxes"], split.extra["labels"], strict=True)]
        values = mean_average_precision(preds, targets)
        return {"map50": values["map_50"], "map": values["map"]}

    def probe(self) -> tuple[Tensor, Tensor]:
        boxes = [torch.tensor([[0.1, 0.1, 0.4, 0.5]]), torch.tensor([[0.5, 0.2, 0.9, 0.8],
                                                                     [0.0, 0.6, 0.3, 0.9]])]
        labels = [torch.tensor([1]), torch.tensor([self.num_classes - 1, 1])]
        offsets, lab = build_targets(boxes, labels, self.anchors, 0.5, VARIANCES)
        target = torch.cat([offsets, lab.unsqueeze(-1).float()], dim=-1)
        gen = torch.Generator().manual_seed(0)
        output = torch.randn(2, self.anchors.shape[0], 4 + self.num_classes, generator=gen)
        return output, target


def _map_backend() -> str:
    """torchmetrics' COCO backend: faster_coco_eval when installed (faster), else pycocotools."""
    import importlib.util

    for name in ("faster_coco_eval", "pycocotools"):
        if importlib.util.find_spec(name) is not None:
            return name
    raise UsageError("det's mAP needs pycocotools or faster-coco-eval: "
                     "pip install faster-coco-eval")


def mean_average_precision(preds: list[dict], targets: list[dict]) -> dict[str, float]:
    """COCO-style mAP over IoU .5:.95 (``map``) and at IoU .5 (``map_50``, VOC's threshold
    with COCO's 101-point interpolation), via ``torchmetrics.detection.MeanAveragePrecision``.
    """
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend=_map_backend())
    metric.update(preds, targets)
    result = metric.compute()
    return {k: max(0.0, float(result[k])) for k in ("map", "map_50")}  # -1: nothing to score

