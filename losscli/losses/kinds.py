"""What a loss consumes: the declared kinds of ``pred`` and ``target``.

A job's adapter turns its model's raw output into the kind a loss declares, so loss/job
compatibility is decided from these declarations alone, when a plan is made.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Family", "Pred", "Target"]


class _Kind(str, Enum):
    """A declared kind; an unknown value is refused with the allowed ones."""

    @classmethod
    def _missing_(cls, value: object) -> None:
        allowed = ", ".join(m.value for m in cls)
        raise ValueError(f"{value!r} is not a valid {cls.__name__.lower()}; choose from: {allowed}")

    def __str__(self) -> str:
        return self.value


class Pred(_Kind):
    """The kind of tensor a loss expects as ``pred``."""

    LOGITS = "logits"  # unnormalised scores; class dim 1 ([N, C] or [N, C, *])
    LOG_PROBS = "log_probs"  # log-softmax over dim 1
    PROBS = "probs"  # probabilities in [0, 1] (softmax over dim 1 on multi-class jobs)
    VALUES = "values"  # real-valued predictions (regression)
    VALUES_VAR = "values_var"  # mean and variance stacked on the last dim (Gaussian NLL)
    BOXES = "boxes_xyxy"  # boxes [N, 4] as (x1, y1, x2, y2)
    IMAGES = "images"  # images [N, C, H, W] in [0, 1]
    DETECTIONS = "detections"  # (box offsets [B, A, 4], class logits [B, A, C])


class Target(_Kind):
    """The kind of tensor a loss expects as ``target``."""

    INDEX = "index"  # integer class indices, shape of pred without dim 1
    BINARY = "binary"  # same-shape floats in [0, 1] (one-hot on multi-class jobs)
    VALUES = "values"  # same-shape real values
    BOXES = "boxes_xyxy"  # boxes [N, 4] as (x1, y1, x2, y2)
    IMAGES = "images"  # images [N, C, H, W] in [0, 1]
    DETECTIONS = "detections"  # (encoded offsets [B, A, 4], labels [B, A]; 0 = background)


class Family(_Kind):
    CLASSIFICATION = "classification"
    BINARY = "binary"
    REGRESSION = "regression"
    SEGMENTATION = "segmentation"
    BOXES = "boxes"
    DETECTION = "detection"
    IMAGE = "image"
