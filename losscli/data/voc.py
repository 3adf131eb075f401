"""Pascal VOC detection data, real or generated, always read through torchvision's reader.

1. ``data_dir``: a real VOCdevkit (``DIR/VOCdevkit/VOC2007`` or ``VOC2012``) read by
   ``torchvision.datasets.VOCDetection`` (``train`` split for training, ``val`` for
   testing), restricted to a class subset; with ``download=True`` torchvision fetches it.
2. Offline default: a generated set written in the exact VOC layout (``Annotations/*.xml``,
   ``JPEGImages/*.jpg``, ``ImageSets/Main/{train,val}.txt``) into the cache and read back
   by the same reader. Each image is a textured background with one to ``max_objects``
   real MNIST digits (the embedded 5k subset; train images take digits from its train
   part, val images from its test part) pasted in random colours at random sizes; the
   class of a box is the digit's name (``zero`` .. ``nine``).

Boxes come back as float ``(x1, y1, x2, y2)`` in pixels of the resized ``image_size``
square image; VOC's 1-based inclusive pixel boxes map to ``(xmin - 1, ymin - 1, xmax,
ymax)``. Objects marked ``difficult`` are dropped, as are objects of other classes.

The split's file lists come from ``VOCDetection`` and each annotation goes through its
``parse_voc_xml``, but the XML itself is parsed by ``defusedxml`` (entities and external
references refused, size and depth bounded), and every malformed file (XML, ``<size>``,
coordinates, a missing or unreadable image) is a ``UsageError`` naming the file and rule.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from losscli.data.mnist import cache_dir, load_mnist
from losscli.errors import UsageError

__all__ = ["DIGIT_CLASSES", "VOC_CLASSES", "DetectionSplit", "SynthConfig", "read_voc",
           "synthetic_voc_root", "write_synthetic_voc"]

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
DIGIT_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_SYNTH_VERSION = 2  # bump when the generator's output changes


@dataclass
class DetectionSplit:
    """Images ``[N, 3, S, S]`` uint8 and, per image, boxes ``[G, 4]`` and labels ``[G]``.

    Labels are ``1..K`` (index into the class list plus one; 0 is background).
    """

    images: Tensor
    boxes: list[Tensor]
    labels: list[Tensor]
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)


# --------------------------------------------------------------------------- reading

# A VOC annotation is about 1 KB and nests 5 elements deep (annotation/object/part/bndbox/
# xmin); anything far beyond is not one, and torchvision's dict conversion recurses per level.
_MAX_XML_BYTES = 1 << 20
_MAX_XML_DEPTH = 16


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _xml_depth(root: ET.Element) -> int:
    deepest, stack = 0, [(root, 1)]
    while stack:  # iterative: a hostile file may nest far deeper than Python recursion
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in node)
    return deepest


def _read_annotation(path: Path) -> dict:
    """The ``<annotation>`` of one XML file as torchvision's dict, parsed by defusedxml.

    Entities, external references, oversized and over-deep files are refused, not expanded.
    """
    import defusedxml.ElementTree as DET
    from defusedxml import DefusedXmlException
    from torchvision.datasets import VOCDetection

    try:
        if path.stat().st_size > _MAX_XML_BYTES:
            raise UsageError(f"VOC annotation {path} is larger than {_MAX_XML_BYTES} bytes; "
                             "a VOC annotation is a few KB")
        root = DET.parse(path).getroot()
    except DefusedXmlException as exc:  # billion laughs, quadratic blow-up, XXE
        name = getattr(exc, "name", None) or getattr(exc, "sysid", None)
        raise UsageError(f"VOC annotation {path} refused: {type(exc).__name__}"
                         f"{f' ({name!r})' if name else ''}; XML entities and external "
                         "references are not expanded, and VOC annotations have none") from None
    except ET.ParseError as exc:
        what = "is empty" if path.stat().st_size == 0 else f"is not well-formed XML ({exc})"
        raise UsageError(f"VOC annotation {path} {what}") from None
    except OSError as exc:
        raise UsageError(f"cannot read VOC annotation {path}: {exc.strerror or exc}") from None
    if root.tag != "annotation":
        raise UsageError(f"VOC annotation {path}: the root element is <{root.tag[:40]}>, not "
                         "<annotation>")
    depth = _xml_depth(root)
    if depth > _MAX_XML_DEPTH:
        raise UsageError(f"VOC annotation {path} nests elements {depth} deep; a VOC annotation "
                         f"nests 5 (at most {_MAX_XML_DEPTH} accepted)")
    ann = VOCDetection.parse_voc_xml(root).get("annotation")
    return ann if isinstance(ann, dict) else {}


def _number(parent: object, key: str, where: str, path: Path) -> float:
    """The finite number in ``<key>`` of ``parent`` (a dict from ``parse_voc_xml``)."""
    text = parent.get(key) if isinstance(parent, dict) else None
    if not isinstance(text, str) or not text:
        raise UsageError(f"VOC annotation {path}: {where} needs one <{key}> with a number, got "
                         f"{'none' if text is None else _short(text)}")
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"VOC annotation {path}: <{key}> of {where} is {_short(text)}, not a "
                         "number") from None
    if not math.isfinite(value):
        raise UsageError(f"VOC annotation {path}: <{key}> of {where} is {text!r}; it must be a "
                         "finite number")
    return value


def _image_size(ann: dict, path: Path) -> tuple[float, float]:
    size = ann.get("size")
    if not isinstance(size, dict):
        raise UsageError(f"VOC annotation {path} has no <size> with <width> and <height>")
    width, height = (_number(size, key, "<size>", path) for key in ("width", "height"))
    if width <= 0 or height <= 0:
        raise UsageError(f"VOC annotation {path}: <size> is {width:g}x{height:g}; width and "
                         "height must be > 0")
    return width, height


def _box(obj: dict, where: str, width: float, height: float, path: Path) -> list[float]:
    """VOC's 1-based inclusive pixel box as continuous xyxy, clipped to the image."""
    bb = obj.get("bndbox")
    if not isinstance(bb, dict):
        raise UsageError(f"VOC annotation {path}: {where} has no <bndbox>")
    xmin, ymin, xmax, ymax = (_number(bb, k, where, path) for k in ("xmin", "ymin", "xmax", "ymax"))
    if xmax < xmin or ymax < ymin:
        raise UsageError(f"VOC annotation {path}: {where} has an empty box (xmin={xmin:g}, "
                         f"xmax={xmax:g}, ymin={ymin:g}, ymax={ymax:g}); VOC boxes are 1-based "
                         "inclusive, so xmin <= xmax and ymin <= ymax")
    x1, y1 = max(xmin - 1, 0.0), max(ymin - 1, 0.0)
    x2, y2 = min(xmax, width), min(ymax, height)
    if x2 <= x1 or y2 <= y1:
        raise UsageError(f"VOC annotation {path}: {where} lies outside the {width:g}x{height:g} "
                         "image given by <size>")
    return [x1, y1, x2, y2]


def _objects(ann: dict, classes: Sequence[str], path: Path) -> tuple[list[list[float]],
                                                                      list[int], float, float]:
    """Boxes (VOC pixels → continuous xyxy) and labels of the wanted, non-difficult objects."""
    width, height = _image_size(ann, path)
    boxes, labels = [], []
    for i, obj in enumerate(ann.get("object", []), 1):
        name = obj.get("name") if isinstance(obj, dict) else None
        if not isinstance(name, str):
            raise UsageError(f"VOC annotation {path}: <object> {i} has no <name>")
        if name not in classes or str(obj.get("difficult", "0")) == "1":
            continue
        boxes.append(_box(obj, f"<object> {i} ({_short(name)})", width, height, path))
        labels.append(classes.index(name) + 1)
    return boxes, labels, width, height


def _read_image(path: Path, width: float, height: float, annotation: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            image = img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        reason = "unknown format" if isinstance(exc, UnidentifiedImageError) else exc
        raise UsageError(f"VOC image {path} is not a readable image ({reason})") from None
    if image.size != (round(width), round(height)):
        raise UsageError(f"VOC image {path} is {image.width}x{image.height} but <size> in "
                         f"{annotation} says {width:g}x{height:g}; its boxes would not match")
    return image


def _split_ids(ds, split_file: Path) -> list[tuple[str, Path, Path]]:
    """``(id, annotation, image)`` per ID of the split file; blank lines skipped."""
    ann_dir = split_file.parents[2] / "Annotations"
    rows = []
    for line, (ann, img) in enumerate(zip(ds.annotations, ds.images, strict=True), 1):
        try:
            image_id = str(Path(ann).relative_to(ann_dir))[:-len(".xml")]
        except ValueError:  # an absolute ID replaced the folder in os.path.join
            image_id = ann[:-len(".xml")]
        if not image_id:
            continue
        if not image_id.isprintable() or "/" in image_id or "\\" in image_id or \
                image_id.startswith("."):
            raise UsageError(f"{split_file} line {line}: image ID {_short(image_id)} is not a "
                             "file name (no '/', '\\', leading '.' or control characters)")
        rows.append((image_id, Path(ann), Path(img)))
    return rows


def _open_split(root: Path, year: str, image_set: str, download: bool):
    """torchvision's ``VOCDetection`` for the split, and the path of its ID list."""
    from torchvision.datasets import VOCDetection

    split_file = (Path(root).expanduser() / "VOCdevkit" / f"VOC{year}" / "ImageSets" / "Main"
                  / f"{image_set}.txt")
    try:
        ds = VOCDetection(str(root), year=year, image_set=image_set, download=download)
    except (RuntimeError, OSError) as exc:
        raise UsageError(
            f"no VOC{year} {image_set!r} split under {root}/VOCdevkit/VOC{year} ({exc}); "
            "point --data-dir at the folder holding VOCdevkit, or add --download when online"
        ) from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{split_file} is not a text list of image IDs ({exc})") from None
    return ds, split_file


def _read_item(row: tuple[str, Path, Path], split_file: Path, classes: Sequence[str],
               image_size: int) -> tuple[Tensor, Tensor, Tensor] | None:
    """One image ``[3, S, S]`` uint8 with its scaled boxes and labels; ``None`` when it
    holds no wanted object (its JPEG is then never decoded: the XML is read first)."""
    from torchvision.transforms.functional import pil_to_tensor

    image_id, ann_path, img_path = row
    for kind, path in (("annotation", ann_path), ("image", img_path)):
        if not path.is_file():
            raise UsageError(f"image ID {image_id!r} in {split_file} has no {kind} {path}")
    boxes, labels, width, height = _objects(_read_annotation(ann_path), classes, ann_path)
    if not boxes:
        return None
    image = _read_image(img_path, width, height, ann_path)
    scale = torch.tensor([image_size / width, image_size / height] * 2)
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.BILINEAR)
    return (pil_to_tensor(image), torch.tensor(boxes, dtype=torch.float32) * scale,
            torch.tensor(labels, dtype=torch.int64))


def read_voc(
    root: Path,
    year: str,
    image_set: str,
    classes: Sequence[str],
    image_size: int,
    max_images: int | None = None,
    download: bool = False,
    min_images: int = 1,
) -> DetectionSplit:
    """Read one split through ``torchvision.datasets.VOCDetection``'s file lists.

    Keeps the images holding at least one (non-difficult) object of ``classes``, the first
    ``max_images`` of them in the split's order, resized to ``image_size`` square (boxes
    scaled with them). Malformed files (XML, sizes, coordinates, images, missing files) and
    a split with fewer than ``min_images`` usable images raise ``UsageError`` naming the
    file and the rule; annotation XML is parsed by defusedxml (no entity expansion).
    """
    ds, split_file = _open_split(root, year, image_set, download)
    rows = _split_ids(ds, split_file)
    if not rows:
        raise UsageError(f"{split_file} lists no image IDs; put one ID per line")
    items, ids = [], []
    for row in rows:
        item = _read_item(row, split_file, classes, image_size)
        if item is None:
            continue
        items.append(item)
        ids.append(row[0])
        if max_images is not None and len(ids) >= max_images:
            break
    where = f"VOC{year} {image_set!r} under {root}"
    if not ids:
        raise UsageError(f"no image of {where} holds any of the classes {', '.join(classes)}")
    if len(ids) < min_images:
        raise UsageError(f"{where} has {len(ids)} image(s) holding the classes "
                         f"{', '.join(classes)}; {min_images} are needed: lower --batch-size "
                         f"to at most {len(ids)}, or add images to {split_file}")
    images, boxes, labels = zip(*items, strict=True)
    return DetectionSplit(torch.stack(images), list(boxes), list(labels), ids)


# --------------------------------------------------------------------------- generating


@dataclass(frozen=True)
class SynthConfig:
    """What the generated set depends on (its cache folder is a hash of these)."""

    classes: tuple[str, ...] = ("zero", "two", "four", "seven")
    num_train: int = 1500
    num_val: int = 300
    image_size: int = 64
    max_objects: int = 4
    min_size: float = 0.2  # object height as a fraction of the image side
    max_size: float = 0.6
    seed: int = 0

    def key(self) -> str:
        ident = json.dumps({**self.__dict__, "version": _SYNTH_VERSION}, sort_keys=True)
        return hashlib.sha1(ident.encode()).hexdigest()[:12]


def synthetic_voc_root(cfg: SynthConfig) -> Path:
    """The cache folder holding ``VOCdevkit/VOC2007`` for ``cfg``, generated on first use."""
    base = cache_dir() / "voc-synth"
    root = base / cfg.key()
    if not (root / "VOCdevkit").is_dir():
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=base, prefix=".tmp-"))
        try:
            write_synthetic_voc(tmp, cfg)
            os.replace(tmp, root)  # atomic: a concurrent or killed run never sees half a set
        except OSError:
            if not (root / "VOCdevkit").is_dir():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # only left when another run won
    return root


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A dark, smoothly varying colour field with fine noise, ``[S, S, 3]`` float."""
    coarse = rng.uniform(0, 110, size=(4, 4, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), np.float32)
    return field + rng.normal(0, 12, size=(size, size, 3))


def _digit_crop(digit: np.ndarray) -> np.ndarray:
    """The digit's tight bounding box (pixels > 32)."""
    ys, xs = np.nonzero(digit > 32)
    return digit[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def _overlaps(box: tuple[int, int, int, int], boxes: list, limit: float = 0.15) -> bool:
    x1, y1, x2, y2 = box
    for a1, b1, a2, b2 in boxes:
        iw, ih = min(x2, a2) - max(x1, a1), min(y2, b2) - max(y1, b1)
        inter = max(iw, 0) * max(ih, 0)
        union = (x2 - x1) * (y2 - y1) + (a2 - a1) * (b2 - b1) - inter
        if inter / union > limit:
            return True
    return False


def _compose(rng, cfg: SynthConfig, pools: list[np.ndarray]) -> tuple[np.ndarray, list]:
    """One image and its objects ``(class name, (x1, y1, x2, y2))`` in continuous pixels."""
    s = cfg.image_size
    canvas = _background(rng, s)
    objects: list[tuple[str, tuple[int, int, int, int]]] = []
    for _ in range(int(rng.integers(1, cfg.max_objects + 1))):
        k = int(rng.integers(len(cfg.classes)))
        crop = _digit_crop(pools[k][rng.integers(len(pools[k]))])
        h = max(4, round(rng.uniform(cfg.min_size, cfg.max_size) * s))
        w = max(3, min(s, round(h * crop.shape[1] / crop.shape[0])))
        for _try in range(20):  # rejection sampling: objects overlap at most IoU 0.15
            x, y = int(rng.integers(0, s - w + 1)), int(rng.integers(0, s - h + 1))
            box = (x, y, x + w, y + h)
            if not _overlaps(box, [b for _, b in objects]):
                break
        else:
            continue
        alpha = np.asarray(Image.fromarray(crop).resize((w, h), Image.BILINEAR), np.float32)
        alpha = alpha[..., None] / 255.0
        colour = rng.uniform(140, 255, size=3)
        patch = canvas[y:y + h, x:x + w]
        canvas[y:y + h, x:x + w] = patch * (1 - alpha) + colour * alpha
        objects.append((cfg.classes[k], box))
    return np.clip(canvas, 0, 255).astype(np.uint8), objects


def _annotation_xml(name: str, size: int, objects: list) -> ET.ElementTree:
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "VOC2007"
    ET.SubElement(ann, "filename").text = f"{name}.jpg"
    ET.SubElement(ET.SubElement(ann, "source"), "database").text = "losscli synthetic digits"
    sz = ET.SubElement(ann, "size")
    for tag, value in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(sz, tag).text = str(value)
    ET.SubElement(ann, "segmented").text = "0"
    for cls, (x1, y1, x2, y2) in objects:
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = cls
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        # VOC pixel boxes are 1-based and inclusive
        for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(bb, tag).text = str(value)
    return ET.ElementTree(ann)


def write_synthetic_voc(root: Path, cfg: SynthConfig) -> None:
    """Write ``cfg``'s images into ``root/VOCdevkit/VOC2007`` in the VOC layout."""
    unknown = [c for c in cfg.classes if c not in DIGIT_CLASSES]
    if unknown or not cfg.classes:
        raise UsageError(f"the generated detection set has the classes {', '.join(DIGIT_CLASSES)}"
                         f"; got {', '.join(unknown) or 'none'}")
    voc = root / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    mnist = load_mnist()
    rng = np.random.default_rng(cfg.seed)
    splits = (("train", cfg.num_train, mnist.train_images, mnist.train_labels),
              ("val", cfg.num_val, mnist.test_images, mnist.test_labels))
    for split, count, digits, digit_labels in splits:
        pools = [digits[digit_labels == DIGIT_CLASSES.index(c)].numpy() for c in cfg.classes]
        names = []
        for i in range(count):
            name = f"{split}_{i:06d}"
            image, objects = _compose(rng, cfg, pools)
            Image.fromarray(image).save(voc / "JPEGImages" / f"{name}.jpg", quality=92)
            _annotation_xml(name, cfg.image_size, objects).write(voc / "Annotations" /
                                                                 f"{name}.xml")
            names.append(name)
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
