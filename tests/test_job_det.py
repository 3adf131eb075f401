"""The det job: VOC-layout generator and reader, default boxes, targets, objective, mAP, CLI."""

import hashlib
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
import torch
from torchvision.datasets import VOCDetection
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from typer.testing import CliRunner

from losscli.cli import app
from losscli.data.voc import SynthConfig, read_voc, synthetic_voc_root, write_synthetic_voc
from losscli.errors import UsageError
from losscli.jobs import create_job
from losscli.jobs.detection import VARIANCES, DetectionJob
from losscli.losses import create_loss
from losscli.losses.detection import focal_detection_loss, ssd_loss
from losscli.ops.anchors import anchors_per_location, default_boxes
from losscli.ops.boxcoder import decode

runner = CliRunner()
TINY_CFG = SynthConfig(num_train=12, num_val=6, image_size=64)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("voc")
    write_synthetic_voc(root, TINY_CFG)
    return root


def _xml_objects(path: Path) -> list[tuple[str, list[int]]]:
    objs = ET.parse(path).getroot().iter("object")
    return [(o.findtext("name"), [int(o.findtext(f"bndbox/{k}"))
                                  for k in ("xmin", "ymin", "xmax", "ymax")]) for o in objs]


# ------------------------------------------------------------------- generated VOC set


def test_generated_set_has_the_voc_layout(tiny_root):
    voc = tiny_root / "VOCdevkit" / "VOC2007"
    train = (voc / "ImageSets/Main/train.txt").read_text().split()
    val = (voc / "ImageSets/Main/val.txt").read_text().split()
    assert len(train) == 12 and len(val) == 6 and not set(train) & set(val)
    for name in train + val:
        assert (voc / "JPEGImages" / f"{name}.jpg").is_file()
        root = ET.parse(voc / "Annotations" / f"{name}.xml").getroot()
        assert root.tag == "annotation" and root.findtext("size/width") == "64"
        for cls, (x1, y1, x2, y2) in _xml_objects(voc / "Annotations" / f"{name}.xml"):
            assert cls in TINY_CFG.classes
            assert 1 <= x1 < x2 <= 64 and 1 <= y1 < y2 <= 64


def test_vocdetection_reads_the_generated_set_and_boxes_round_trip(tiny_root):
    ds = VOCDetection(str(tiny_root), year="2007", image_set="train")
    assert len(ds) == 12
    image, target = ds[0]
    assert image.size == (64, 64) and image.mode == "RGB"
    objects = target["annotation"]["object"]
    assert isinstance(objects, list) and len(objects) >= 1
    split = read_voc(tiny_root, "2007", "train", TINY_CFG.classes, 64)
    xml = _xml_objects(Path(ds.annotations[0]))
    expected = torch.tensor([[x1 - 1, y1 - 1, x2, y2] for _, (x1, y1, x2, y2) in xml],
                            dtype=torch.float32)
    torch.testing.assert_close(split.boxes[0], expected)
    assert split.labels[0].tolist() == [TINY_CFG.classes.index(c) + 1 for c, _ in xml]
    assert split.images.shape == (12, 3, 64, 64) and split.images.dtype == torch.uint8
    # resizing scales the boxes with the image
    half = read_voc(tiny_root, "2007", "train", TINY_CFG.classes, 32)
    torch.testing.assert_close(half.boxes[0], expected / 2)
    # a class subset drops the other objects, and images left without any
    one = read_voc(tiny_root, "2007", "train", TINY_CFG.classes[:1], 64)
    assert all(set(lab.tolist()) == {1} for lab in one.labels) and len(one) <= 12


def test_a_box_bounds_its_digit(tiny_root):
    """Pixels inside a box differ from the background more than the ring just outside."""
    split = read_voc(tiny_root, "2007", "val", TINY_CFG.classes, 64)
    img = split.images[0].float().mean(0)
    x1, y1, x2, y2 = split.boxes[0][0].long().tolist()
    inside = img[y1:y2, x1:x2]
    assert inside.max() - inside.median() > 60  # a bright stroke on a dark background


def test_generator_is_deterministic_and_knobs_apply(tmp_path):
    def digest(root: Path) -> str:
        files = sorted((root / "VOCdevkit").rglob("*.*"))
        return hashlib.sha1(b"".join(f.read_bytes() for f in files)).hexdigest()

    cfg = SynthConfig(num_train=6, num_val=2, max_objects=1, classes=("one", "eight"))
    write_synthetic_voc(tmp_path / "a", cfg)
    write_synthetic_voc(tmp_path / "b", cfg)
    write_synthetic_voc(tmp_path / "c", SynthConfig(num_train=6, num_val=2, max_objects=1,
                                                    classes=("one", "eight"), seed=1))
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")
    for xml in (tmp_path / "a/VOCdevkit/VOC2007/Annotations").glob("*.xml"):
        objects = _xml_objects(xml)
        assert len(objects) == 1 and objects[0][0] in ("one", "eight")


def test_cache_is_keyed_by_config_and_reused(monkeypatch, tmp_path):
    monkeypatch.setenv("LOSSCLI_CACHE", str(tmp_path))
    cfg = SynthConfig(num_train=4, num_val=2)
    root = synthetic_voc_root(cfg)
    assert root.parent == tmp_path / "voc-synth" and (root / "VOCdevkit").is_dir()
    stamp = (root / "VOCdevkit/VOC2007/ImageSets/Main/train.txt").stat().st_mtime_ns
    assert synthetic_voc_root(cfg) == root  # not rewritten
    assert (root / "VOCdevkit/VOC2007/ImageSets/Main/train.txt").stat().st_mtime_ns == stamp
    assert synthetic_voc_root(SynthConfig(num_train=5, num_val=2)) != root
    assert not [p for p in (tmp_path / "voc-synth").iterdir() if p.name.startswith(".tmp")]


def test_data_dir_reads_a_voc_folder_through_the_same_reader(tiny_root):
    job = create_job("det", data_dir=str(tiny_root), classes="zero,two,four,seven",
                     max_images=10)
    data = job.load_data()
    # VOC's val split (6 images) is the test split; 15 % of train is held out for validation
    assert data.n_train == 8 and len(data.val) == 2 and data.test.x.shape[0] == 6
    assert data.source.startswith(f"VOC2007 at {tiny_root}")
    assert data.train.y.shape == (8, 336, 5) and len(data.test.extra["boxes"]) == 6
    with pytest.raises(UsageError, match="no VOC2012"):
        create_job("det", data_dir=str(tiny_root), year="2012").load_data()
    with pytest.raises(UsageError, match="no training object of class cat"):
        create_job("det", data_dir=str(tiny_root), classes="zero,cat").load_data()
    with pytest.raises(UsageError, match="--year applies only with --data-dir"):
        create_job("det", year="2012")


# ------------------------------------------------------------------ anchors and targets


def test_default_boxes_equal_torchvision():
    gen = DefaultBoxGenerator([[2], [2], [2]], scales=[0.2, 0.4, 0.65, 0.9])
    expected = gen._grid_default_boxes([[8, 8], [4, 4], [2, 2]], [64, 64])
    boxes = default_boxes((8, 4, 2), (0.2, 0.4, 0.65, 0.9), (2.0,))
    torch.testing.assert_close(boxes, expected)
    assert anchors_per_location((2.0,)) == 4 == gen.num_anchors_per_location()[0]
    with pytest.raises(ValueError, match="scales"):
        default_boxes((8, 4), (0.2, 0.4))


def test_model_output_lines_up_with_default_boxes():
    job = DetectionJob()
    model = job.build_model(None)  # the model does not depend on the data
    out = model(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, job.anchors.shape[0], 4 + job.num_classes) == (2, 336, 9)
    # prior init: every object class starts at probability 0.01 (sigmoid), background wins
    assert torch.allclose(torch.sigmoid(out[..., 5:]), torch.tensor(0.01), atol=0.01)
    assert (out[..., 4:].argmax(-1) == 0).all()


def test_targets_match_and_encode_a_known_box():
    """One 20x30-px object on a 64-px image: matched default boxes decode back to it."""
    job = DetectionJob()
    box = torch.tensor([[10.0, 20.0, 30.0, 50.0]])
    from losscli.data.voc import DetectionSplit

    split = DetectionSplit(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), [box],
                           [torch.tensor([3])], ["x"])
    y = job._encode(split)[0]
    labels, offsets = y[:, 4].long(), y[:, :4]
    positive = labels > 0
    assert positive.sum() >= 1 and set(labels[positive].tolist()) == {3}
    assert set(labels.tolist()) <= {0, 3}
    decoded = decode(offsets[positive], job.anchors[positive], VARIANCES) * 64
    torch.testing.assert_close(decoded, box.expand_as(decoded), atol=1e-4, rtol=0)
    from torchvision.ops import box_convert, box_iou

    iou = box_iou(box / 64, box_convert(job.anchors, "cxcywh", "xyxy"))[0]
    assert positive[iou.argmax()]  # the best default box is positive whatever its IoU
    assert torch.equal(positive, (iou >= 0.5) | (torch.arange(len(iou)) == iou.argmax()))


# -------------------------------------------------------------------------- objective


def _batch(job, seed=0):
    output, target = job.probe()
    g = torch.Generator().manual_seed(seed)
    return torch.randn(output.shape, generator=g).requires_grad_(True), target


def test_whole_detection_losses_see_the_whole_output():
    job = DetectionJob()
    output, target = _batch(job)
    pred, tgt = (output[..., :4], output[..., 4:]), (target[..., :4], target[..., 4].long())
    torch.testing.assert_close(job.bind(create_loss("ssd"))(output, target),
                               ssd_loss(pred, tgt))
    torch.testing.assert_close(job.bind(create_loss("focal_det"))(output, target),
                               focal_detection_loss(pred, tgt))


def test_composed_spec_equals_the_detection_loss_it_spells():
    """sigmoid_focal + smooth_l1 (beta .11) term by term = RetinaNet's focal_det."""
    job = DetectionJob()
    output, target = _batch(job, 1)
    objective = job.bind(create_loss("sigmoid_focal+smooth_l1:beta=0.11"))
    torch.testing.assert_close(objective(output, target),
                               job.bind(create_loss("focal_det"))(output, target))
    assert objective.scores == "sigmoid"


def test_giou_term_uses_decoded_positive_boxes_only():
    job = DetectionJob()
    output, target = _batch(job, 2)
    labels = target[..., 4].long()
    positive = labels > 0
    n_pos = positive.sum()
    pred_boxes = decode(output[..., :4], job.anchors, VARIANCES)[positive]
    gt_boxes = decode(target[..., :4], job.anchors, VARIANCES)[positive]
    from torchvision.ops import generalized_box_iou_loss

    expected_box = generalized_box_iou_loss(pred_boxes, gt_boxes, reduction="sum") / n_pos
    value = job.bind(create_loss("ssd+2*giou"))(output, target)
    torch.testing.assert_close(value - job.bind(create_loss("ssd"))(output, target),
                               2 * expected_box, rtol=1e-4, atol=1e-5)


def test_box_term_gradient_reaches_positives_only():
    job = DetectionJob()
    output, target = _batch(job, 3)
    positive = target[..., 4] > 0
    job.bind(create_loss("ce+giou"))(output, target).backward()
    grad = output.grad[..., :4].abs().sum(-1)
    assert (grad[positive] > 0).all() and (grad[~positive] == 0).all()


def test_softmax_classification_term_covers_every_non_ignored_anchor():
    job = DetectionJob()
    output, target = _batch(job, 4)
    target[0, :50, 4] = torch.where(target[0, :50, 4] == 0, -1.0, target[0, :50, 4])  # ignore
    labels = target[..., 4].long()
    n_pos = (labels > 0).sum()
    objective = job.bind(create_loss("ce+l1"))
    value = objective(output, target)
    ce = torch.nn.functional.cross_entropy(output[..., 4:].reshape(-1, job.num_classes),
                                           labels.reshape(-1), reduction="sum",
                                           ignore_index=-1) / n_pos
    l1 = (output[..., :4] - target[..., :4]).abs().sum(-1)[labels > 0].sum() / n_pos
    torch.testing.assert_close(value, ce + l1, rtol=1e-5, atol=1e-5)
    assert objective.scores == "softmax"


def test_objective_runs_on_meta_tensors_so_it_never_syncs():
    """``.item()``, boolean-mask indexing and ``nonzero`` fail on the meta device."""
    job = DetectionJob()
    output, target = job.probe()
    output = torch.randn(output.shape, device="meta", requires_grad=True)
    target = torch.zeros(target.shape, device="meta")
    for spec in ("ssd", "focal_det", "sigmoid_focal+giou", "focal+ciou", "ce+smooth_l1",
                 "bce_logits+diou"):
        job.bind(create_loss(spec))(output, target).backward()


def test_specs_that_cannot_train_a_detector_are_refused():
    job = DetectionJob()
    output, target = job.probe()
    for spec in ("giou", "sigmoid_focal", "ce"):
        with pytest.raises(ValueError, match="needs a classification term"):
            job.bind(create_loss(spec))(output, target)
    for name in ("dice", "ssim", "gaussian_nll"):
        assert job.incompatibility(create_loss(name).terms[0].info) is not None
    for name in ("ssd", "ce", "sigmoid_focal", "giou", "smooth_l1"):
        assert job.incompatibility(create_loss(name).terms[0].info) is None


# --------------------------------------------------------------------------- metrics


class _Oracle(torch.nn.Module):
    """Returns the encoded targets as the prediction: offsets and confident logits."""

    def __init__(self, y, num_classes, wrong_class=False):
        super().__init__()
        self.y, self.k, self.wrong, self.i = y, num_classes, wrong_class, 0

    def forward(self, x):
        y = self.y[self.i:self.i + x.shape[0]]
        self.i += x.shape[0]
        labels = y[..., 4].long()
        if self.wrong:
            labels = torch.where(labels > 0, labels % (self.k - 1) + 1, labels)
        logits = 20 * torch.nn.functional.one_hot(labels, self.k).float() - 10
        return torch.cat([y[..., :4], logits], -1)


@pytest.mark.parametrize("sigmoid", [False, True])
def test_map_of_a_perfect_and_a_wrong_detector(monkeypatch, tmp_path, sigmoid):
    monkeypatch.setenv("LOSSCLI_CACHE", str(tmp_path))
    job = create_job("det", max_images=16)
    data = job.load_data()
    objective = job.bind(create_loss("sigmoid_focal+giou" if sigmoid else "ssd"))
    assert objective.scores == ("sigmoid" if sigmoid else "softmax")
    perfect = job.evaluate(_Oracle(data.test.y, job.num_classes), data.test, objective)
    assert perfect["map50"] == pytest.approx(1.0) and perfect["map"] > 0.95
    wrong = job.evaluate(_Oracle(data.test.y, job.num_classes, wrong_class=True), data.test,
                         objective)
    assert wrong["map50"] == 0.0 and wrong["map"] == 0.0


# ------------------------------------------------------------------------------- CLI


def test_train_det_end_to_end(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--task", "det", "--loss", "ssd", "--loss",
                              "sigmoid_focal+giou", "--max-images", "64", "--steps", "6",
                              "--batch-size", "16", "--eval-every", "3", "--quiet",
                              "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    runs = pd.read_csv(out / "runs.csv")
    assert set(runs["status"]) == {"ok"} and len(runs) == 2
    assert set(runs["primary_metric"]) == {"map50"}
    assert runs["test_final"].between(0, 1).all()
    history = pd.read_csv(out / "history.csv")
    assert {"map50", "map", "loss"} <= set(history["metric"])
    assert "generated VOC-layout digits" in runs["data_source"].iloc[0]


@pytest.mark.parametrize("spec, expected", [
    ("dice", "segmentation losses do not apply to det"),
    ("ssim", "image losses do not apply to det"),
    ("giou", "needs a classification term"),
])
def test_plan_refuses_losses_that_cannot_train_det(tmp_path, spec, expected):
    res = runner.invoke(app, ["train", "--task", "det", "--loss", spec, "--quiet",
                              "--out", str(tmp_path / "never")])
    assert res.exit_code == 2, res.output
    assert expected in res.output
    assert not (tmp_path / "never").exists()


def test_bad_job_options_exit_2(tmp_path):
    cases = ((["--image-size", "50"], "multiple of 32"),
             (["--classes", "zero,cat"], "--classes takes"),
             (["--fg-fraction", "0.1"], "unknown option '--fg-fraction' for task 'det'"),
             (["--opt", "max_objects=0"], "--max-objects (option max_objects of det) must be"))
    for args, expected in cases:
        res = runner.invoke(app, ["train", "--task", "det", "--loss", "ssd", "--quiet",
                                  "--out", str(tmp_path / "never"), *args])
        assert res.exit_code == 2, res.output
        assert expected in res.output
