"""Hostile inputs to the readers, the loss-spec parser and plugin loading.

Each case feeds one malformed or hostile input and checks that it ends in a ``UsageError``
(exit 2 at the CLI) whose message names the culprit (file, key or value) and the rule,
never a bare ``AssertionError``, ``RecursionError``, parser exception or expanded entity.
"""

import gzip
import struct
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from losscli.data import mnist
from losscli.data.mnist import load_mnist
from losscli.data.voc import read_voc
from losscli.errors import UsageError
from losscli.losses import LossSpecError, create_loss, get_loss_info
from losscli.losses import registry as reg
from losscli.losses.registry import parse_spec, parse_value

runner = CliRunner()

# --------------------------------------------------------------------------- VOC

IDS = ("img_0", "img_1")
SIZE = 32


def _xml(size: str = f"<width>{SIZE}</width><height>{SIZE}</height><depth>3</depth>",
         box: str = "<xmin>5</xmin><ymin>6</ymin><xmax>20</xmax><ymax>22</ymax>",
         name: str = "dog", extra: str = "") -> str:
    return (f"<annotation><filename>x.jpg</filename><size>{size}</size>"
            f"<object><name>{name}</name><difficult>0</difficult><bndbox>{box}</bndbox></object>"
            f"{extra}</annotation>")


@pytest.fixture
def voc(tmp_path) -> Path:
    """A tiny valid VOC2007 layout: two 32x32 images with one 'dog' each, split 'train'."""
    base = tmp_path / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / sub).mkdir(parents=True)
    for image_id in IDS:
        Image.new("RGB", (SIZE, SIZE), (90, 40, 200)).save(base / "JPEGImages" / f"{image_id}.jpg")
        (base / "Annotations" / f"{image_id}.xml").write_text(_xml())
    (base / "ImageSets/Main/train.txt").write_text("\n".join(IDS) + "\n")
    return tmp_path


def _base(root: Path) -> Path:
    return root / "VOCdevkit" / "VOC2007"


def _set_xml(text: str | bytes):
    def mutate(root: Path) -> Path:
        path = _base(root) / "Annotations" / "img_0.xml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path
    return mutate


def _set_ids(text: str | bytes):
    def mutate(root: Path) -> Path:
        path = _base(root) / "ImageSets/Main/train.txt"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path
    return mutate


def _remove(sub: str):
    def mutate(root: Path) -> Path:
        path = _base(root) / sub
        path.unlink()
        return path
    return mutate


def _set_image(data: bytes | None = None, size: tuple[int, int] | None = None):
    def mutate(root: Path) -> Path:
        path = _base(root) / "JPEGImages" / "img_0.jpg"
        if size is not None:
            Image.new("RGB", size).save(path)
        else:
            path.write_bytes(data)
        return path
    return mutate


def _truncate_image(root: Path) -> Path:
    path = _base(root) / "JPEGImages" / "img_0.jpg"
    path.write_bytes(path.read_bytes()[:120])
    return path


def _annotation_dir(root: Path) -> Path:
    path = _base(root) / "Annotations" / "img_0.xml"
    path.unlink()
    path.mkdir()
    return path


LAUGHS = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
          + "".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
                    for i in range(1, 10))
          + "]>" + _xml(name="&lol9;"))
XXE = ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
       + _xml(name="&xxe;"))
QUADRATIC = ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "' + "x" * 5000 + '">]>'
             + _xml(name="&a;" * 200))
DEEP = _xml(extra="<a>" * 3000 + "</a>" * 3000)

VOC_CASES = [
    # (mutation, substrings the message must hold; "{file}" is the mutated file's path)
    ("empty_xml", _set_xml(""), ["{file}", "is empty"]),
    ("truncated_xml", _set_xml("<annotation><size><width>3"), ["{file}", "not well-formed"]),
    ("binary_xml", _set_xml(bytes(range(256))), ["{file}", "not well-formed"]),
    ("wrong_root", _set_xml("<foo><size/></foo>"), ["{file}", "root element is <foo>"]),
    ("no_size", _set_xml("<annotation><object><name>dog</name></object></annotation>"),
     ["{file}", "no <size>"]),
    ("size_without_width", _set_xml(_xml(size="<height>32</height>")), ["{file}", "<width>"]),
    ("text_width", _set_xml(_xml(size="<width>wide</width><height>32</height>")),
     ["{file}", "'wide'", "not a number"]),
    ("zero_width_image", _set_xml(_xml(size="<width>0</width><height>32</height>")),
     ["{file}", "0x32", "must be > 0"]),
    ("negative_height", _set_xml(_xml(size="<width>32</width><height>-4</height>")),
     ["{file}", "must be > 0"]),
    ("nan_width", _set_xml(_xml(size="<width>nan</width><height>32</height>")),
     ["{file}", "finite"]),
    ("text_coordinate", _set_xml(_xml(box="<xmin>ten</xmin><ymin>1</ymin><xmax>9</xmax>"
                                          "<ymax>9</ymax>")),
     ["{file}", "<xmin>", "'ten'", "not a number"]),
    ("empty_coordinate", _set_xml(_xml(box="<xmin/><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax>")),
     ["{file}", "<xmin>"]),
    ("missing_xmax", _set_xml(_xml(box="<xmin>1</xmin><ymin>1</ymin><ymax>9</ymax>")),
     ["{file}", "<xmax>"]),
    ("inf_coordinate", _set_xml(_xml(box="<xmin>1</xmin><ymin>1</ymin><xmax>inf</xmax>"
                                         "<ymax>9</ymax>")), ["{file}", "finite"]),
    ("no_bndbox", _set_xml("<annotation><size><width>32</width><height>32</height></size>"
                           "<object><name>dog</name></object></annotation>"),
     ["{file}", "no <bndbox>"]),
    ("zero_width_box", _set_xml(_xml(box="<xmin>11</xmin><ymin>1</ymin><xmax>10</xmax>"
                                         "<ymax>9</ymax>")),
     ["{file}", "empty box", "xmin <= xmax"]),
    ("inverted_box", _set_xml(_xml(box="<xmin>1</xmin><ymin>20</ymin><xmax>9</xmax>"
                                       "<ymax>3</ymax>")), ["{file}", "empty box"]),
    ("box_outside_image", _set_xml(_xml(box="<xmin>100</xmin><ymin>1</ymin><xmax>120</xmax>"
                                            "<ymax>9</ymax>")), ["{file}", "outside"]),
    ("object_without_name", _set_xml(_xml(extra="<object><pose>x</pose></object>")),
     ["{file}", "<object> 2 has no <name>"]),
    ("object_text_only", _set_xml(_xml(extra="<object>junk</object>")),
     ["{file}", "has no <name>"]),
    ("billion_laughs", _set_xml(LAUGHS), ["{file}", "refused", "entities"]),
    ("external_entity", _set_xml(XXE), ["{file}", "refused"]),
    ("quadratic_blowup", _set_xml(QUADRATIC), ["{file}", "refused"]),
    ("parameter_entity", _set_xml('<!DOCTYPE a [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>'
                                  + _xml()), ["{file}", "refused"]),
    ("deep_nesting", _set_xml(DEEP), ["{file}", "nests elements", "deep"]),
    ("huge_xml", _set_xml(_xml(extra="<pad>" + "x" * (1 << 20) + "</pad>")),
     ["{file}", "larger than"]),
    ("id_without_annotation", _remove("Annotations/img_1.xml"),
     ["'img_1'", "{file}", "has no annotation"]),
    ("id_without_image", _remove("JPEGImages/img_0.jpg"), ["'img_0'", "{file}", "has no image"]),
    ("annotation_is_a_directory", _annotation_dir, ["{file}", "has no annotation"]),
    ("image_is_text", _set_image(b"this is not a JPEG"), ["{file}", "not a readable image"]),
    ("image_is_empty", _set_image(b""), ["{file}", "not a readable image"]),
    ("image_truncated", _truncate_image, ["{file}", "not a readable image"]),
    ("image_size_mismatch", _set_image(size=(48, 40)), ["{file}", "48x40", "32x32"]),
    ("empty_split", _set_ids(""), ["{file}", "lists no image IDs"]),
    ("blank_split", _set_ids("\n\n  \n"), ["{file}", "lists no image IDs"]),
    ("binary_split", _set_ids(b"\xff\xfe\x00\x81garbage"), ["{file}", "not a text list"]),
    ("traversal_id", _set_ids("img_0\n../../../etc/passwd\n"),
     ["{file}", "line 2", "not a file name"]),
    ("absolute_id", _set_ids("/etc/passwd\n"), ["{file}", "line 1", "not a file name"]),
    ("control_char_id", _set_ids("img\x00_0\n"), ["{file}", "not a file name"]),
    ("no_split_file", _remove("ImageSets/Main/train.txt"), ["no VOC2007 'train' split"]),
]


@pytest.mark.parametrize("mutate, expected", [c[1:] for c in VOC_CASES],
                         ids=[c[0] for c in VOC_CASES])
def test_voc_hostile_input_is_a_usage_error_naming_the_file(voc, mutate, expected):
    path = mutate(voc)
    with pytest.raises(UsageError) as info:
        read_voc(voc, "2007", "train", ("dog",), 32)
    message = str(info.value)
    for part in expected:
        assert part.replace("{file}", str(path)) in message, message
    assert "lol" * 10 not in message and "root:" not in message  # nothing was expanded


def test_voc_valid_fixture_reads_and_keeps_one_pixel_boxes(voc):
    (_base(voc) / "Annotations" / "img_1.xml").write_text(
        _xml(box="<xmin>7</xmin><ymin>7</ymin><xmax>7</xmax><ymax>7</ymax>"))
    split = read_voc(voc, "2007", "train", ("dog",), 64)
    assert split.ids == list(IDS) and split.images.shape == (2, 3, 64, 64)
    torch.testing.assert_close(split.boxes[0], torch.tensor([[8.0, 10.0, 40.0, 44.0]]))
    torch.testing.assert_close(split.boxes[1], torch.tensor([[12.0, 12.0, 14.0, 14.0]]))


def test_voc_objects_of_other_classes_are_not_validated(voc):
    (_base(voc) / "Annotations" / "img_1.xml").write_text(
        _xml(extra="<object><name>cat</name><bndbox><xmin>junk</xmin></bndbox></object>"))
    assert len(read_voc(voc, "2007", "train", ("dog",), 32)) == 2


def test_voc_too_few_images_says_which_option_to_change(voc):
    with pytest.raises(UsageError, match=r"has 2 image\(s\).*lower --batch-size to at most 2"):
        read_voc(voc, "2007", "train", ("dog",), 32, min_images=8)


def test_voc_no_wanted_class_names_the_classes(voc):
    with pytest.raises(UsageError, match="holds any of the classes cat"):
        read_voc(voc, "2007", "train", ("cat",), 32)


# --------------------------------------------------------------------------- IDX (MNIST)

FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


def _idx(array: torch.Tensor, type_code: int = 0x08) -> bytes:
    dims = array.shape
    return (struct.pack(f">HBB{len(dims)}I", 0, type_code, len(dims), *dims)
            + array.to(torch.uint8).numpy().tobytes())


def _valid_files(n: int = 20) -> dict[str, bytes]:
    labels = torch.arange(n) % 10
    images = labels.view(-1, 1, 1).expand(n, 28, 28) * 20
    return {"train_images": _idx(images), "train_labels": _idx(labels),
            "test_images": _idx(images[:10]), "test_labels": _idx(labels[:10])}


@pytest.fixture
def mnist_dir(tmp_path) -> Path:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for key, data in _valid_files().items():
        (raw / FILES[key]).write_bytes(data)
    return tmp_path


IDX_CASES = [
    # (file, its new content, message parts)
    ("train_images", b"\x12\x34\x56\x78" + bytes(100), ["magic number 12345678"]),
    ("train_images", b"", ["magic number missing"]),
    ("train_images", b"\x00\x00", ["magic number 0000"]),
    ("train_images", _idx(torch.zeros(5, 28, 28), 0x0D), ["magic number 00000d03"]),
    ("train_images", _idx(torch.zeros(20)), ["1 dimensions, expected 3"]),
    ("train_labels", _idx(torch.zeros(20, 28, 28)), ["3 dimensions, expected 1"]),
    ("train_images", _idx(torch.zeros(20, 32, 32)), ["32x32 pixels, expected 28x28"]),
    ("train_images", _valid_files()["train_images"][:-100], ["truncated"]),
    ("train_labels", _valid_files()["train_labels"][:-1], ["truncated"]),
    ("test_images", _valid_files()["test_images"] + b"extra", ["trailing data"]),
    ("train_images", _valid_files()["train_images"][:9], ["header is cut short"]),
    ("train_images", struct.pack(">HBB3I", 0, 8, 3, 2**32 - 1, 28, 28), ["truncated"]),
    ("test_labels", gzip.compress(_valid_files()["test_labels"]), ["gzip-compressed"]),
    ("train_labels", _idx(torch.arange(19) % 10), ["20 images", "19 labels", "pair up"]),
    ("test_labels", _idx(torch.full((10,), 200)), ["label 200", "0..9"]),
]


@pytest.mark.parametrize("key, data, expected", IDX_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(IDX_CASES)])
def test_corrupt_idx_is_a_usage_error_naming_the_file(mnist_dir, key, data, expected):
    (mnist_dir / "MNIST" / "raw" / FILES[key]).write_bytes(data)
    with pytest.raises(UsageError) as info:
        load_mnist(mnist_dir)
    message = str(info.value)
    assert FILES[key] in message, message
    for part in expected:
        assert part in message, message


def test_valid_idx_files_load(mnist_dir):
    split = load_mnist(mnist_dir)
    assert split.train_images.shape == (20, 28, 28) and split.test_labels.tolist()[:3] == [0, 1, 2]


def test_gz_without_unpacked_idx_says_to_unpack(mnist_dir):
    raw = mnist_dir / "MNIST" / "raw"
    (raw / FILES["train_images"]).rename(raw / f"{FILES['train_images']}.gz")
    with pytest.raises(UsageError, match=f"{FILES['train_images']}.gz is there: unpack it"):
        load_mnist(mnist_dir)


@pytest.fixture
def debian_fashion(tmp_path, monkeypatch) -> Path:
    """A fake Debian dataset-fashion-mnist folder of valid .gz files, and a fresh cache."""
    src = tmp_path / "debian"
    src.mkdir()
    for key, data in _valid_files().items():
        (src / f"{FILES[key]}.gz").write_bytes(gzip.compress(data))
    monkeypatch.setattr(mnist, "DEBIAN_FASHION_DIR", src)
    monkeypatch.setenv("LOSSCLI_CACHE", str(tmp_path / "cache"))
    return src


@pytest.mark.parametrize("content, expected", [
    (b"plain text, not gzip", "not a readable gzip file"),
    (gzip.compress(_valid_files()["train_labels"])[:-12], "not a readable gzip file"),
    (gzip.compress(b"\x00\x00\x08\x01" + bytes(3)), "not a valid MNIST IDX file"),
], ids=["not_gzip", "truncated_gzip", "gzip_of_corrupt_idx"])
def test_bad_debian_gz_is_refused_and_not_cached(debian_fashion, tmp_path, content, expected):
    (debian_fashion / f"{FILES['train_labels']}.gz").write_bytes(content)
    with pytest.raises(UsageError) as info:
        mnist.load_fashion()
    assert FILES["train_labels"] in str(info.value) and expected in str(info.value)
    assert not list((tmp_path / "cache").rglob(FILES["train_labels"]))


def test_valid_debian_gz_files_unpack_and_load(debian_fashion):
    assert mnist.load_fashion().train_images.shape == (20, 28, 28)


# --------------------------------------------------------------------------- loss specs

SPEC_CASES = [
    # (spec, message part)
    ("focal:alpha=" + "[" * 5000 + "1" + "]" * 5000, "characters long"),
    ("focal:alpha=[[[[[0.5]]]]]", "nests lists 5 deep"),
    ("ce+" * 400 + "ce", "characters long"),
    ("focal:gamma=inf", "'inf' is not a finite number"),
    ("focal:gamma=-inf", "not a finite number"),
    ("focal:gamma=nan", "'nan' is not a finite number"),
    ("focal:gamma=NaN", "not a finite number"),
    ("focal:gamma=Infinity", "not a finite number"),
    ("focal:gamma=1e999", "'1e999' is not a finite number"),
    ("focal:alpha=[0.25,inf]", "not a finite number"),
    ("ce:ignore_index=9223372036854775808", "int64"),
    ("ce:ignore_index=-9223372036854775809", "int64"),
    ("ce:ignore_index=" + "9" * 30, "int64"),
    ("focal:gamma=" + "1" * 400, "int64"),
    ("ce+", "empty term"),
    ("+ce", "empty term"),
    ("ce++focal", "empty term"),
    ("ce+ +focal", "empty term"),
    ("   +   ", "empty term"),
    ("0.5*", "missing loss name"),
    ("0.5*:gamma=1", "missing loss name"),
    ("*ce", "bad coefficient"),
    ("nan*ce", "coefficient must be finite"),
    ("1e999*ce", "coefficient must be finite"),
    ("1" * 400 + "*ce", "coefficient must be finite"),
    ("ce:,", "write key=value"),
    ("focal:alpha=[0.25,,0.75]", "empty element"),
    ("focal:alpha=[0.25,]", "empty element"),
    ("focal:alpha=0.25]", "unbalanced ']'"),
    ("focal:alpha=[[0.25]", "unbalanced '['"),
    ("ce\x00", "control character"),
    ("ce\n+focal", "control character"),
    ("focal:gamma=\x1b[31m2", "control character"),
    ("", "empty loss spec"),
    ("   ", "empty loss spec"),
]


@pytest.mark.parametrize("spec, message", SPEC_CASES,
                         ids=[f"spec{i}-{m.split()[0]}" for i, (_, m) in enumerate(SPEC_CASES)])
def test_hostile_spec_is_a_loss_spec_error(spec, message):
    pattern = message.replace("[", r"\[").replace("]", r"\]")
    with pytest.raises(LossSpecError, match=pattern) as info:
        create_loss(spec)
    assert len(str(info.value)) < 400  # the message quotes the spec, it does not echo it


def test_parameter_errors_name_the_parameter():
    with pytest.raises(LossSpecError, match="parameter 'gamma' of 'focal': value 'inf'"):
        create_loss("focal:gamma=inf")


@pytest.mark.parametrize("value, message", [
    ("[" * 5000 + "]" * 5000, "characters long"),
    ("[" * 400 + "]" * 400, "nests lists 400 deep"),
    ("[[[[[]]]]]", "nests lists 5 deep"),
    ("9" * 5000, "characters long"),
    ("1" * 4400, "characters long"),
    ("1]", "stray bracket"),
    ("[1][2]", "unbalanced"),
    ("nan", "not a finite number"),
    (str(2**63), "int64"),
])
def test_parse_value_refuses(value, message):
    with pytest.raises(LossSpecError, match=message.replace("[", r"\[")):
        parse_value(value)


@pytest.mark.parametrize("spec", [None, 5, ["ce"]])
def test_spec_that_is_not_text(spec):
    with pytest.raises(LossSpecError, match="a loss spec is text"):
        parse_spec(spec)


def test_limits_still_accept_real_specs():
    assert parse_value("[[0.1,0.2],[0.3,0.4]]") == ((0.1, 0.2), (0.3, 0.4))
    assert parse_value(str(2**63 - 1)) == 2**63 - 1 and parse_value("-1e308") == -1e308
    assert create_loss("focal:alpha=[0.25,0.75],gamma=2+0.5*ce").key == \
        "focal:alpha=[0.25,0.75],gamma=2+0.5*ce"


# --------------------------------------------------------------------------- plugins


@pytest.fixture
def scratch_registry(monkeypatch):
    monkeypatch.setattr(reg, "_REGISTRY", dict(reg._REGISTRY))
    monkeypatch.setattr(reg, "_ALIASES", dict(reg._ALIASES))


def _loss_src(name: str, extra: str = "", signature: str = "*, reduction='mean'",
              family: str = "regression", pred: str = "values", target: str = "values") -> str:
    return (f"@register_loss({name!r}, family={family!r}, pred={pred!r}, target={target!r},\n"
            f"               description='d', reference='r'{extra})\n"
            f"def {name}_fn(pred, target, {signature}):\n"
            "    return (pred - target).abs().mean()\n")


HEADER = "from losscli.losses import register_loss\n"

PLUGIN_CASES = [
    # (plugin source, message parts); the path is always checked
    ("x = 1\nraise RuntimeError('plugin broke\\nsecond line')\n",
     ["at line 2", "RuntimeError: plugin broke"]),
    ("import math\n1 / 0\n", ["at line 2", "ZeroDivisionError: division by zero"]),
    ("def f(:\n    pass\n", ["line 1", "SyntaxError"]),
    ("x = (\n", ["SyntaxError"]),
    ("\tif True:\n  pass\n", ["IndentationError"]),
    ("import sys\nsys.exit(3)\n", ["sys.exit(3)", "only registers losses"]),
    ("import sys\nsys.exit('bye')\n", ["sys.exit('bye')"]),
    ("raise SystemExit\n", ["sys.exit(None)"]),
    ("import no_such_dependency_xyz\n", ["at line 1", "No module named 'no_such_dependency_xyz'"]),
    ("raise ValueError()\n", ["at line 1", "ValueError"]),
    (HEADER + _loss_src("ce"), ["at line 2", "'ce' is already registered"]),
    (HEADER + _loss_src("my_l1", extra=", aliases=('l2',)"), ["'l2' is already registered"]),
    (HEADER + _loss_src("no_red", signature="*, scale=1.0"), ["must take a 'reduction'"]),
    (HEADER + _loss_src("bad_fam", family="vision"),
     ["'vision' is not a valid family", "choose from: classification"]),
    (HEADER + _loss_src("bad_pred", pred="scores"), ["'scores' is not a valid pred"]),
    (HEADER + _loss_src("bad_target", target="labels"), ["'labels' is not a valid target"]),
]


@pytest.mark.parametrize("source, expected", PLUGIN_CASES,
                         ids=[f"plugin{i}" for i in range(len(PLUGIN_CASES))])
def test_failing_plugin_is_a_usage_error_naming_file_and_cause(tmp_path, scratch_registry,
                                                               source, expected):
    plugin = tmp_path / "bad_plugin.py"
    plugin.write_text(source)
    with pytest.raises(UsageError) as info:
        reg.load_plugin(str(plugin))
    message = str(info.value)
    assert message.startswith(f"plugin {plugin} failed"), message
    for part in expected:
        assert part in message, message
    assert "second line" not in message


def test_plugin_with_null_bytes(tmp_path, scratch_registry):
    plugin = tmp_path / "nul.py"
    plugin.write_bytes(b"x = 1\x00\n")
    with pytest.raises(UsageError, match=f"plugin {plugin} failed"):
        reg.load_plugin(str(plugin))


def test_failing_plugin_leaves_nothing_half_registered(tmp_path, scratch_registry):
    plugin = tmp_path / "half.py"
    plugin.write_text(HEADER + _loss_src("half_a") + _loss_src("half_b")
                      + "raise OSError('late')\n")
    before = {i.name for i in reg.list_losses()}
    with pytest.raises(UsageError, match="OSError: late"):
        reg.load_plugin(str(plugin))
    assert {i.name for i in reg.list_losses()} == before
    with pytest.raises(UsageError, match="unknown loss 'half_a'"):
        get_loss_info("half_a")
    with pytest.raises(UsageError, match="OSError: late"):  # not cached as loaded
        reg.load_plugin(str(plugin))


def test_keyboard_interrupt_in_a_plugin_is_not_swallowed(tmp_path, scratch_registry):
    plugin = tmp_path / "ctrl_c.py"
    plugin.write_text(HEADER + _loss_src("ctrl_c_loss") + "raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        reg.load_plugin(str(plugin))
    with pytest.raises(UsageError):
        get_loss_info("ctrl_c_loss")


@pytest.mark.parametrize("make, message", [
    (lambda p: str(p / "missing.py"), "not found"),
    (lambda p: (p / "dir.py").mkdir() or str(p / "dir.py"), "is not a file"),
    (lambda p: (p / "notes.txt").write_text("x") and str(p / "notes.txt"), "not a .py file"),
    (lambda p: "no_such_plugin_module_xyz", "neither a .py file nor importable"),
    (lambda p: "../evil", "neither a .py file nor a module name"),
    (lambda p: "", "neither a .py file nor a module name"),
], ids=["missing", "directory", "not_py", "unknown_module", "path_like", "empty"])
def test_plugin_target_that_is_not_a_plugin(tmp_path, scratch_registry, make, message):
    with pytest.raises(UsageError, match=message):
        reg.load_plugin(make(tmp_path))


def test_module_plugin_failure_names_its_file(tmp_path, monkeypatch, scratch_registry):
    (tmp_path / "broken_mod_plugin.py").write_text("x = 1\nraise KeyError('k')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UsageError) as info:
        reg.load_plugin("broken_mod_plugin")
    assert str(tmp_path / "broken_mod_plugin.py") in str(info.value)
    assert "line 2: KeyError: 'k'" in str(info.value)
    assert "broken_mod_plugin" not in sys.modules


@pytest.fixture
def fake_entry_points(monkeypatch, scratch_registry):
    def install(*loaders):
        class EntryPoint:
            def __init__(self, i, fn):
                self.name, self.value, self.module, self.load = f"ep{i}", f"pkg{i}:f", "pkg", fn

        eps = [EntryPoint(i, fn) for i, fn in enumerate(loaders)]
        monkeypatch.setattr(reg, "_ENTRY_POINTS_LOADED", False)
        monkeypatch.setattr(reg, "_ENTRY_POINTS_ERROR", None)
        monkeypatch.setattr(reg, "entry_points", lambda group: eps)
    return install


def test_failing_entry_point_is_a_usage_error_every_time(fake_entry_points):
    def broken():
        def register():
            reg.register_loss("ep_half", family="regression", pred="values", target="values",
                              description="d", reference="r")(
                lambda p, t, *, reduction="mean": p)
            raise RuntimeError("entry point exploded")
        return register

    fake_entry_points(broken)
    for _ in range(2):
        with pytest.raises(UsageError, match="entry point ep0 = 'pkg0:f' failed: RuntimeError"):
            create_loss("mse")
    with pytest.raises(UsageError, match="unknown loss"):
        get_loss_info("ep_half")


def test_entry_point_calling_sys_exit(fake_entry_points):
    fake_entry_points(lambda: sys.exit(3))
    with pytest.raises(UsageError, match=r"sys.exit\(3\)"):
        reg.load_entry_point_plugins()


# --------------------------------------------------------------------------- CLI (exit 2)


def _cli(*args: str):
    from losscli.cli import app  # here: the unit cases above do not depend on the CLI

    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


@pytest.mark.parametrize("spec, part", [
    ("focal:alpha=" + "[" * 5000 + "]" * 5000, "characters long"),
    ("ce:label_smoothing=nan", "not a finite number"),
    ("ce:ignore_index=99999999999999999999", "int64"),
    ("mse+", "empty term"),
], ids=["deep", "nan", "huge_int", "empty_term"])
def test_cli_train_refuses_hostile_specs(tmp_path, spec, part):
    assert part in _cli("train", "--task", "reg", "--loss", spec, "--steps", "1",
                        "--out", str(tmp_path / "run"))
    assert not (tmp_path / "run" / "runs.csv").exists()


@pytest.mark.parametrize("source, part", [
    ("raise RuntimeError('boom')\n", "RuntimeError: boom"),
    ("import sys\nsys.exit(3)\n", "sys.exit(3)"),
    ("def f(:\n", "SyntaxError"),
    (HEADER + _loss_src("mse"), "already registered"),
], ids=["raises", "sys_exit", "syntax", "clash"])
def test_cli_list_losses_with_a_failing_plugin(tmp_path, scratch_registry, source, part):
    plugin = tmp_path / "cli_plugin.py"
    plugin.write_text(source)
    output = _cli("list", "losses", "--plugin", str(plugin))
    assert "cli_plugin.py" in output and part in output
