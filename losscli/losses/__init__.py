"""The loss library: a registry of pure functions with declared inputs.

Importing this package registers every built-in loss; third-party losses come through
the ``losscli.losses`` entry-point group or ``--plugin``.
"""

from losscli.losses import (  # noqa: F401  (importing registers the losses)
    binary,
    boxes,
    classification,
    detection,
    image,
    longtail,
    noisy,
    regression,
    segmentation,
    segmentation_extra,
)
from losscli.losses.kinds import Family, Pred, Target
from losscli.losses.reduction import reduce_loss
from losscli.losses.registry import (
    Loss,
    LossInfo,
    LossSpecError,
    LossTerm,
    create_loss,
    get_loss_info,
    list_losses,
    load_entry_point_plugins,
    load_plugin,
    register_loss,
)

__all__ = [
    "Family",
    "Loss",
    "LossInfo",
    "LossSpecError",
    "LossTerm",
    "Pred",
    "Target",
    "create_loss",
    "get_loss_info",
    "list_losses",
    "load_entry_point_plugins",
    "load_plugin",
    "reduce_loss",
    "register_loss",
]
