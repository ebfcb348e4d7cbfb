"""Fuzzing the data readers (issue 38): COCO JSON, VOC XML, YOLO label files and data.yaml, each
with malformed values in every field (wrong types, out of range, non-finite, 400-digit numbers,
names of files outside the data set, nesting past the parser's limit) and with random, truncated
and flipped bytes.

Whatever the input, under ``on_bad='error'`` and ``'skip'`` alike, a reader returns a data set or
raises one :class:`BadInputError` whose one-line message names one of the data set's own files:
no other exception (no traceback), every skipped item named by its file, and no record whose image
lies outside the data set's folder (a file ``outside.png`` and a VOC annotation ``outside.xml``
wait beside the folder for a path that leads out).

data.yaml's ``path:`` keeps the meaning Ultralytics gives it (it may name any folder, which is
then read), so the fuzz keeps it inside each example's folder.

``make test`` runs a few dozen examples a reader, derandomized (the same every run);
``benchmarks/bench_robustness_readers.py`` runs :func:`check` on many more and records the counts.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import pytest
import yaml
from fuzzing import fuzz_settings
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from detlab.data.coco import read_coco
from detlab.data.errors import BadInputError
from detlab.data.fields import is_inside
from detlab.data.voc import read_voc
from detlab.data.yolo import read_yolo

OUTSIDE = "OUTSIDE"  # in a generated value: the absolute path of the file waiting outside the data set
WEIRD_STRINGS = ["", " ", "x", "0", "1", "-1", "2", "40", "640.0", "1e999", "-1e999", "nan", "inf", "1e-320",
                 "9" * 400, "0x10", "1_0", "\u0663", "\ufeff0", "\u202ecat", "a\x00b", "cat", "dog", "a.png", "b.png",
                 "images/train", "../../outside.png", "../outside.png", "../outside", OUTSIDE, "/", ".", "..",
                 "~", "~nosuchuser/x", "C:\\x.png", "yes", "null"]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([10**400, -(10**400), 2**63, 2**64, 10**6 + 1]),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(WEIRD_STRINGS),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)


@functools.cache
def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), (30, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def paths_of(value, prefix: tuple = ()):
    """Every place inside nested dicts and lists, as a key path."""
    yield prefix
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, inner in items:
        yield from paths_of(inner, prefix + (key,))


@st.composite
def mutated(draw, template, values=VALUES):
    """``template`` with one to three of its places replaced by ``values``, deleted, or given a
    sibling; now and then the whole of it replaced."""
    if draw(st.integers(0, 19)) == 0:
        return draw(values)
    document = copy.deepcopy(template)
    for _ in range(draw(st.integers(1, 3))):
        places = list(paths_of(document))[1:]
        if not places:
            break
        *parents, key = draw(st.sampled_from(places))
        parent = functools.reduce(lambda node, k: node[k], parents, document)
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[key] = draw(values)
        elif action == "delete":
            del parent[key]
        elif isinstance(parent, list):
            parent.insert(key, draw(values))
        else:
            parent[draw(st.text(max_size=6))] = draw(values)
    return document


def corrupted(data: bytes):
    """Random bytes, or ``data`` truncated, with a byte changed, or with random bytes inserted."""
    size = len(data)
    return st.one_of(
        st.binary(max_size=300),
        st.integers(0, size).map(lambda cut: data[:cut]),
        st.tuples(st.integers(0, size - 1), st.integers(0, 255)).map(
            lambda c: data[: c[0]] + bytes([c[1]]) + data[c[0] + 1 :]
        ),
        st.tuples(st.integers(0, size), st.binary(min_size=1, max_size=20)).map(
            lambda c: data[: c[0]] + c[1] + data[c[0] :]
        ),
    )


def deep(opening: str, closing: str, before: str = "", after: str = ""):
    """Nesting up to 100,000 levels deep (Python's parsers stop near 1,000)."""
    return st.integers(500, 100_000).map(lambda n: before + opening * n + closing * n + after)


# COCO JSON -------------------------------------------------------------------------------------

COCO_TEMPLATE = {
    "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 20}, {"id": 2, "file_name": "b.png"}],
    "categories": [{"id": 1, "name": "cat", "keypoints": ["head", "tail"]}, {"id": 3, "name": "dog"}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 8], "iscrowd": 0,
                     "keypoints": [2, 3, 2, 0, 0, 0]},
                    {"id": 2, "image_id": 2, "category_id": 3, "bbox": [0.5, 0, 5, 5]}],
}  # fmt: skip
COCO_CASES = st.one_of(
    mutated(COCO_TEMPLATE).map(lambda document: json.dumps(document).encode()),
    corrupted(json.dumps(COCO_TEMPLATE).encode()),
    deep("[", "]", '{"images": [], "annotations": ', "}").map(str.encode),
)


def write_coco(folder: Path, case: bytes, outside: Path) -> None:
    for name in ("a.png", "b.png"):
        write(folder / "images" / name, png_bytes())
    write(folder / "ann.json", case.replace(OUTSIDE.encode(), json.dumps(str(outside))[1:-1].encode()))


# VOC XML ---------------------------------------------------------------------------------------

VOC_TEMPLATE = {
    "filename": "a.png", "size": {"width": "40", "height": "20", "depth": "3"},
    "object": [{"name": "cat", "difficult": "0", "bndbox": {"xmin": "1", "ymin": "2", "xmax": "11", "ymax": "10"}},
               {"name": "dog", "difficult": "1", "bndbox": {"xmin": "0.5", "ymin": "0", "xmax": "40", "ymax": "20"}}],
}  # fmt: skip
XML_VALUES = st.recursive(
    st.one_of(
        st.sampled_from(WEIRD_STRINGS), st.text(max_size=12), st.integers().map(str), st.floats().map(repr)
    ),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["name", "bndbox", "xmin", "x"]), inner, max_size=3)
    ),
    max_leaves=6,
)


def to_xml(value, tag: str = "annotation", raw: bool = False) -> str:
    """Nested dicts as elements, lists as repeated elements, anything else as text (escaped
    unless ``raw``: raw text makes malformed XML, as a careless writer would)."""
    if isinstance(value, list):
        return "".join(to_xml(item, tag, raw) for item in value)
    if isinstance(value, dict):
        inner = "".join(to_xml(item, str(key), raw) for key, item in value.items())
    else:
        inner = str(value) if raw else escape(str(value))
    return f"<{tag}>{inner}</{tag}>"


SPLIT_IDS = st.one_of(
    st.sampled_from(["a", "b", "../outside", "../../outside", OUTSIDE, "/", "..", "a/../b", "sub/a"]),
    st.text(max_size=10),
)
VOC_CASES = st.one_of(
    st.tuples(
        st.just("xml"),
        st.builds(
            lambda document, raw: to_xml(document, raw=raw).encode(),
            mutated(VOC_TEMPLATE, XML_VALUES),
            st.booleans(),
        ),
    ),
    st.tuples(st.just("xml"), corrupted(to_xml(VOC_TEMPLATE).encode())),
    st.tuples(st.just("xml"), deep("<a>", "</a>", "<annotation>", "</annotation>").map(str.encode)),
    st.tuples(
        st.just("split"),
        st.lists(SPLIT_IDS, max_size=4).map(lambda ids: "".join(f"{i}\n" for i in ids).encode()),
    ),
    st.tuples(st.just("split"), corrupted(b"a\nb\n")),
    st.tuples(st.just("classes"), corrupted(b"cat\ndog\n")),
)


def write_voc(folder: Path, case: tuple[str, bytes], outside: Path) -> None:
    kind, data = case
    for stem in ("a", "b"):
        write(folder / "JPEGImages" / f"{stem}.png", png_bytes())
        write(folder / "Annotations" / f"{stem}.xml", to_xml({**VOC_TEMPLATE, "filename": f"{stem}.png"}))
    write(folder / "ImageSets" / "Main" / "train.txt", "a\nb\n")
    write(folder / "classes.txt", "cat\ndog\n")
    data = data.replace(OUTSIDE.encode(), str(outside.with_suffix("")).encode())
    target = {"xml": "Annotations/a.xml", "split": "ImageSets/Main/train.txt", "classes": "classes.txt"}[kind]
    write(folder / target, data)


# YOLO label files ------------------------------------------------------------------------------

TOKENS = st.one_of(
    st.sampled_from(
        [
            "0",
            "1",
            "2",
            "-1",
            "0.5",
            "0.25",
            "0.0",
            "1.0",
            "1.5",
            "-0.1",
            "nan",
            "inf",
            "1e999",
            "x",
            "0x10",
            "1_0",
            "\u0663",
            "9" * 5000,
            "\ufeff0",
        ]
    ),
    st.floats().map(repr),
    st.integers().map(str),
    st.text(min_size=1, max_size=8).map(lambda t: "".join(t.split()) or "x"),
)
LABEL_TEXT = b"0 0.5 0.5 0.5 0.5\n1 0.25 0.25 0.2 0.2\n"
YOLO_LABEL_CASES = st.one_of(
    st.tuples(
        st.just("label"),
        st.lists(st.lists(TOKENS, max_size=7).map(" ".join), max_size=4).map(
            lambda lines: "\n".join(lines).encode()
        ),
    ),
    st.tuples(st.just("label"), corrupted(LABEL_TEXT)),
    st.tuples(st.just("classes"), corrupted(b"cat\ndog\n")),
    st.tuples(
        st.just("classes"),
        st.lists(st.text(max_size=6), max_size=4).map(lambda names: "\n".join(names).encode()),
    ),
)


def write_yolo_labels(folder: Path, case: tuple[str, bytes], outside: Path) -> None:
    kind, data = case
    for stem in ("a", "b"):
        write(folder / "images" / f"{stem}.png", png_bytes())
        write(folder / "labels" / f"{stem}.txt", LABEL_TEXT)
    write(folder / "classes.txt", "cat\ndog\n")
    write(folder / ("labels/a.txt" if kind == "label" else "classes.txt"), data)


# data.yaml -------------------------------------------------------------------------------------

DATA_YAML_TEMPLATE = {"path": ".", "train": "images/train", "val": ["images/val"], "test": "test.txt", "nc": 2,
                      "names": {0: "cat", 1: "dog"}}  # fmt: skip
LIST_LINES = st.one_of(
    st.sampled_from(
        [
            "images/train/a.png",
            "./images/val/b.png",
            "../outside.png",
            OUTSIDE,
            "/",
            "~/x.png",
            "# a comment",
            "images/train",
            "a\x00b",
        ]
    ),
    st.text(max_size=10),
)
DATA_YAML_CASES = st.one_of(
    st.tuples(st.just("yaml"), mutated(DATA_YAML_TEMPLATE)),
    st.tuples(st.just("yaml"), corrupted(yaml.safe_dump(DATA_YAML_TEMPLATE).encode())),
    st.tuples(st.just("list"), st.lists(LIST_LINES, max_size=4).map(lambda lines: "\n".join(lines).encode())),
)
# PyYAML takes time quadratic in the nesting before it gives up (about 1 s at 1,000 levels, 2 s at
# any depth beyond), so only the benchmark draws these; test_reader_fields has one.
DEEP_DATA_YAML = st.tuples(st.just("yaml"), deep("[", "]", "names: ").map(str.encode))


def inside_example(folder: Path, value) -> bool:
    """Whether data.yaml's ``path: value`` names a folder inside ``folder`` (the reader takes a
    relative path from the YAML's folder, else from the working folder)."""
    if not isinstance(value, str) or "\0" in value:
        return True  # refused by the reader
    expanded = os.path.expanduser(value)
    return (
        not os.path.isabs(expanded)
        and is_inside(folder / expanded, folder)
        and ((folder / expanded).is_dir() or not Path(expanded).is_dir())
    )


def write_data_yaml(folder: Path, case: tuple[str, bytes], outside: Path) -> None:
    kind, data = case
    for split, stem in (("train", "a"), ("val", "b")):
        write(folder / "images" / split / f"{stem}.png", png_bytes())
        write(folder / "labels" / split / f"{stem}.txt", LABEL_TEXT)
    write(folder / "test.txt", "images/train/a.png\n./images/val/b.png\n")
    write(folder / "data.yaml", yaml.safe_dump(DATA_YAML_TEMPLATE))
    if not isinstance(data, bytes):  # a document
        data = yaml.safe_dump(data).encode()
    data = data.replace(OUTSIDE.encode(), str(outside).encode())
    if kind == "yaml" and b"path" in data:
        try:
            document = yaml.safe_load(data)
        except Exception:  # not YAML: the reader is to say so
            document = None
        if isinstance(document, dict) and not inside_example(folder, document.get("path")):
            document["path"] = "."  # Ultralytics' meaning: `path` may name any folder, then read
            data = yaml.safe_dump(document).encode()
    write(folder / ("data.yaml" if kind == "yaml" else "test.txt"), data)


# The check -------------------------------------------------------------------------------------


@dataclass
class Reader:
    cases: st.SearchStrategy
    write: Callable[[Path, object, Path], None]
    read: Callable[[Path, str], object]


READERS = {
    "coco_json": Reader(
        COCO_CASES, write_coco, lambda folder, on_bad: read_coco(folder / "ann.json", on_bad=on_bad)
    ),
    "voc_xml": Reader(VOC_CASES, write_voc, lambda folder, on_bad: read_voc(folder, "train", on_bad=on_bad)),
    "yolo_labels": Reader(
        YOLO_LABEL_CASES, write_yolo_labels, lambda folder, on_bad: read_yolo(folder, on_bad=on_bad)
    ),
    "data_yaml": Reader(
        DATA_YAML_CASES, write_data_yaml, lambda folder, on_bad: read_yolo(folder, on_bad=on_bad)
    ),
}


# The files the writers above write; a file named otherwise is counted as "<folder>/(another name)".
TEMPLATE_FILES = {"ann.json", "classes.txt", "data.yaml", "test.txt", "ImageSets/Main/train.txt",
                  *(f"{folder}/{stem}.{suffix}" for folder, suffix in (("Annotations", "xml"), ("JPEGImages", "png"),
                    ("images", "png"), ("labels", "txt"), ("images/train", "png"), ("images/val", "png"),
                    ("labels/train", "txt"), ("labels/val", "txt")) for stem in ("a", "b"))}  # fmt: skip


def named_file(message: str, folder: Path) -> str:
    """The data set file a message names (relative to ``folder``); fails if it names none."""
    assert message.startswith(f"{folder}{os.sep}"), f"names no file of the data set: {message[:300]}"
    path = message[len(str(folder)) + 1 :].split(": ", 1)[0]
    path = path.rsplit(":", 1)[0] if path.rsplit(":", 1)[-1].isdigit() else path
    return path if path in TEMPLATE_FILES else f"{path.split(os.sep)[0]}/(another name)"


def outcome(read: Callable[[], object], folder: Path) -> Counter:
    """``read()`` under the contract, counted: ``read`` (with the items it skipped and repaired,
    and their ``ProblemLog`` kinds) or ``refused: FILE``. Any other exception, or a breach of the
    contract, propagates."""
    try:
        dataset = read()
    except BadInputError as error:
        assert "\n" not in str(error), str(error)[:300]
        return Counter({f"refused: {named_file(str(error), folder)}": 1})
    for record in dataset.records:
        assert is_inside(record.image_path, folder), f"read {record.image_path}, outside {folder}"
    for message in dataset.problems.skipped:
        named_file(message, folder)
    problems = dataset.problems
    return Counter(
        {
            "read": 1,
            "items skipped": len(problems.skipped),
            "items repaired": len(problems.fixed),
            **{f"kind: {kind}": n for kind, n in problems.kinds.items()},
        }
    )


def check(reader: str, case) -> Counter:
    """Write ``case`` as a data set in a fresh folder and read it under ``on_bad='error'`` and
    ``'skip'``: the outcomes counted (``error: read``, ``skip: refused: ann.json``, ``skip: items
    skipped``, ``skip: kind: bad annotation``, ...). Raises on anything the contract does not allow."""
    counts: Counter = Counter()
    with tempfile.TemporaryDirectory(prefix="detlab-fuzz-") as temporary:
        base = Path(temporary)
        folder = base / "ds"
        write(base / "outside.png", png_bytes())
        write(
            base / "outside.xml",
            to_xml({**VOC_TEMPLATE, "filename": "outside.png", "object": {"name": "outsider"}}),
        )
        READERS[reader].write(folder, case, base / "outside.png")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # repairs and skips are warned about; counted here instead
            for on_bad in ("error", "skip"):
                result = outcome(functools.partial(READERS[reader].read, folder, on_bad), folder)
                counts.update({f"{on_bad}: {key}": n for key, n in result.items() if n})
    return counts


@pytest.mark.parametrize("reader", READERS)
def test_reader_fuzz(reader):
    @fuzz_settings(25)
    @given(case=READERS[reader].cases)
    def never_a_traceback(case):
        check(reader, case)

    never_a_traceback()


def test_the_fuzz_sees_a_path_leading_out():
    """The contract is not vacuous: reading ``outside.png`` is caught, and so is an error naming a file outside."""
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary) / "ds"
        with pytest.raises(AssertionError, match="outside"):
            outcome(lambda: read_coco_outside(folder), folder)
        with pytest.raises(AssertionError, match="names no file of the data set"):
            outcome(
                lambda: (_ for _ in ()).throw(BadInputError(Path(temporary) / "outside.xml", "bad")), folder
            )


def read_coco_outside(folder: Path):
    write(folder.parent / "outside.png", png_bytes())
    write_coco(
        folder,
        json.dumps({"images": [{"id": 1, "file_name": OUTSIDE}]}).encode(),
        folder.parent / "outside.png",
    )
    return read_coco(folder / "ann.json", allow_outside_root=True)
