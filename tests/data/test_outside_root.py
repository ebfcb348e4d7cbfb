"""Paths named in a data set's files stay inside the data set's folder (issue 38, item 9): a COCO
``file_name`` of ``../../outside.png`` or an absolute path, a VOC split id of ``/abs/path/x`` or
a data.yaml entry leading out are refused (skipped under ``on_bad='skip'``), and ``detlab convert``
copies nothing from outside, unless ``data.allow_outside_root`` is set. data.yaml's ``path:``
keeps the meaning Ultralytics gives it: it is the data set's folder."""

import json
import warnings

import pytest
import yaml
from PIL import Image

from detlab import config
from detlab.cli import main as cli_main
from detlab.data.coco import read_coco
from detlab.data.errors import BadInputError
from detlab.data.fields import OUTSIDE_KIND, OutsideRootError
from detlab.data.loading import load_dataset
from detlab.data.voc import read_voc
from detlab.data.voc_files import read_voc_annotations
from detlab.data.yolo import read_yolo


def write_png(path, size=(40, 20)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 10, 10)).save(path)
    return path


def quietly(read, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read(*args, **kwargs)


@pytest.fixture
def coco_set(tmp_path):
    """``tmp_path/outside.png`` beside the data set ``tmp_path/ds`` (images in ``ds/images``);
    ``make(file_name)`` writes ``ds/ann.json`` with ``a.png`` and a second image named so."""
    outside = write_png(tmp_path / "outside.png")
    write_png(tmp_path / "ds" / "images" / "a.png")

    def make(file_name):
        images = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": file_name}]
        annotations = [{"id": n, "image_id": n, "category_id": 1, "bbox": [1, 1, 5, 5]} for n in (1, 2)]
        path = tmp_path / "ds" / "ann.json"
        path.write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "x"}]})
        )
        return path

    make.outside = outside
    return make


@pytest.mark.parametrize("file_name", ["../../outside.png", "ABSOLUTE", "./../../outside.png"])
def test_coco_file_name_outside_the_image_folder(coco_set, file_name):
    file_name = str(coco_set.outside) if file_name == "ABSOLUTE" else file_name
    path = coco_set(file_name)
    with pytest.raises(
        OutsideRootError,
        match=r"ann.json: images\[1\] \(id 2\) 'file_name' .* leads outside the data "
        r"set's folder .*allow_outside_root=true",
    ):
        read_coco(path)
    dataset = quietly(read_coco, path, on_bad="skip")
    assert [r.image_id for r in dataset.records] == [1]
    assert dataset.problems.kinds == {OUTSIDE_KIND: 1}  # its annotation is dropped with it, not counted again
    allowed = read_coco(path, allow_outside_root=True)
    assert allowed.records[1].image_path.resolve() == coco_set.outside.resolve()
    assert (
        load_dataset(f"coco:{path}", allow_outside_root=True).records[1].image_path.resolve()
        == coco_set.outside.resolve()
    )
    with pytest.raises(BadInputError, match="leads outside"):
        load_dataset(f"coco:{path}")


def test_coco_paths_that_stay_inside_are_read(coco_set, tmp_path):
    write_png(tmp_path / "ds" / "images" / "sub" / "b.png")
    assert len(read_coco(coco_set("sub/../sub/b.png"))) == 2


def test_a_link_inside_the_folder_is_the_owners_choice(coco_set, tmp_path):
    (tmp_path / "ds" / "images" / "linked.png").symlink_to(
        coco_set.outside
    )  # as `detlab convert --link` writes
    assert len(read_coco(coco_set("linked.png"))) == 2


def test_convert_copies_nothing_from_outside(coco_set, tmp_path, capsys):
    path = coco_set("../../outside.png")
    assert cli_main(["convert", f"coco:{path}", f"voc:{tmp_path / 'out'}"]) == 2
    assert "leads outside" in capsys.readouterr().err
    assert not (tmp_path / "out" / "JPEGImages" / "outside.png").exists()
    assert cli_main(["convert", f"coco:{path}", f"voc:{tmp_path / 'out'}", "--on-bad", "skip"]) == 0
    assert sorted(p.name for p in (tmp_path / "out" / "JPEGImages").iterdir()) == ["a.png"]


@pytest.fixture
def voc_set(tmp_path):
    """A VOC folder ``tmp_path/voc`` with image ``a``, and ``tmp_path/x.xml`` + ``tmp_path/x.png``
    outside it; ``make(ids)`` writes the split file ``evil.txt``."""
    root = tmp_path / "voc"
    xml = (
        "<annotation><filename>{0}.png</filename><object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
        "<xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>"
    )
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations" / "a.xml").write_text(xml.format("a"))
    write_png(root / "JPEGImages" / "a.png")
    (tmp_path / "x.xml").write_text(xml.format("x"))
    write_png(tmp_path / "x.png")

    def make(*ids):
        (root / "ImageSets" / "Main" / "evil.txt").write_text("".join(f"{image_id}\n" for image_id in ids))
        return root

    return make


@pytest.mark.parametrize("image_id", ["ABSOLUTE", "../../x", "../JPEGImages/../../x"])
def test_voc_split_id_outside_the_folder(voc_set, tmp_path, image_id):
    image_id = str(tmp_path / "x") if image_id == "ABSOLUTE" else image_id
    root = voc_set("a", image_id)
    with pytest.raises(OutsideRootError, match=r"evil.txt:2: id .* leads outside the data set's folder"):
        read_voc(root, "evil")
    with pytest.raises(OutsideRootError, match="evil.txt:2"):
        read_voc_annotations(root, "evil")  # what `detlab eval --gt DIR` reads
    dataset = quietly(read_voc, root, "evil", on_bad="skip")
    assert [r.image_id for r in dataset.records] == ["a"] and dataset.problems.kinds == {OUTSIDE_KIND: 1}
    allowed = read_voc(root, "evil", allow_outside_root=True)
    assert [r.image_id for r in allowed.records] == ["a", image_id]
    assert allowed.records[1].image_path.resolve() == (tmp_path / "x.png").resolve()
    assert len(load_dataset(f"voc:{root}", "evil", allow_outside_root=True)) == 2


def test_voc_ids_in_subfolders_stay_readable(voc_set):
    root = voc_set("a", "sub/b")
    (root / "Annotations" / "sub").mkdir()
    (root / "Annotations" / "sub" / "b.xml").write_text((root / "Annotations" / "a.xml").read_text())
    write_png(root / "JPEGImages" / "sub" / "b.png")
    assert [r.image_id for r in read_voc(root, "evil").records] == ["a", "sub/b"]


def write_split(root, split, stem):
    write_png(root / "images" / f"{stem}.png")
    (root / "labels").mkdir(parents=True, exist_ok=True)
    (root / "labels" / f"{stem}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    return root / "images"


def write_yaml(file, **data):
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(yaml.safe_dump({"names": ["cat"], **data}))
    return file


def test_data_yaml_entry_leading_outside(tmp_path):
    elsewhere = write_split(tmp_path / "elsewhere", "train", "e")
    data_yaml = write_yaml(tmp_path / "ds" / "data.yaml", train="../elsewhere/images")
    with pytest.raises(
        OutsideRootError, match=r"data.yaml: 'train' entry '../elsewhere/images' leads outside"
    ):
        read_yolo(data_yaml, "train")
    allowed = read_yolo(data_yaml, "train", allow_outside_root=True)
    assert [r.image_path.parent for r in allowed.records] == [elsewhere]


def test_roboflow_entry_prefers_the_folder_beside_the_yaml(tmp_path):
    # "../train/images" from Roboflow means train/images beside data.yaml; a train/images beside the
    # data set's folder was read first before.
    write_split(tmp_path / "train", "train", "sibling")
    write_split(tmp_path / "ds" / "train", "train", "own")
    data_yaml = write_yaml(tmp_path / "ds" / "data.yaml", train="../train/images")
    assert [r.image_id for r in read_yolo(data_yaml, "train").records] == ["own"]


def test_image_list_naming_a_file_outside(tmp_path):
    write_split(tmp_path / "ds", "train", "a")
    outside = write_png(tmp_path / "outside.png")
    (tmp_path / "ds" / "train.txt").write_text(f"images/a.png\n{outside}\n../outside.png\n")
    data_yaml = write_yaml(tmp_path / "ds" / "data.yaml", train="train.txt")
    with pytest.raises(OutsideRootError, match=r"train.txt:2: image .* leads outside"):
        read_yolo(data_yaml, "train")
    dataset = quietly(read_yolo, data_yaml, "train", on_bad="skip")
    assert [r.image_id for r in dataset.records] == ["a"] and dataset.problems.kinds == {OUTSIDE_KIND: 2}
    assert len(read_yolo(data_yaml, "train", allow_outside_root=True)) == 2


def test_data_yaml_path_keeps_its_ultralytics_meaning(tmp_path):
    # `path:` names the data set's folder, wherever it is; its entries are read from there.
    write_split(tmp_path / "datasets" / "shapes", "train", "s")
    data_yaml = write_yaml(
        tmp_path / "configs" / "shapes.yaml", path=str(tmp_path / "datasets" / "shapes"), train="images"
    )
    assert [r.image_id for r in read_yolo(data_yaml, "train").records] == ["s"]


def test_allow_outside_root_is_a_data_setting():
    assert config.DataConfig().allow_outside_root is False
    assert config.resolve(config.DataConfig, overrides=["allow_outside_root=true"]).allow_outside_root is True
