"""Data formats and bad input: image decoding, captions, readers, `smartclip data check`."""
import json
import random
import shutil
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from data_fixtures import (caption_for, make_bad_csv_dataset, make_bad_sharegpt4v_dataset,
                           make_bad_wds_shards, make_csv_dataset, make_sharegpt4v_dataset, png_bomb_bytes,
                           write_bad_inputs)
from smartclip.data import (BadCaption, BadImage, DataConfig, DataError, clean_caption, load_image,
                            parse_sources, read_csv, read_sharegpt4v, sample_caption, split_sentences)
from smartclip.data.check import check_dataset


# ---------------------------------------------------------------- images

def test_load_image_skips_and_repairs_every_kind(tmp_path):
    files = write_bad_inputs(tmp_path)
    expected_skip = {"zero_byte": "empty_file", "truncated": "truncated_image", "not_image": "not_an_image",
                     "bomb": "decompression_bomb"}
    for case, kind in expected_skip.items():
        with pytest.raises(BadImage) as err:
            load_image(tmp_path / files[case])
        assert err.value.kind == kind and files[case] in err.value.path
    with pytest.raises(BadImage) as err:
        load_image(tmp_path / "nope.jpg")
    assert err.value.kind == "missing_file"
    expected_repair = {"grayscale": "converted_grayscale", "cmyk": "converted_cmyk", "palette": "converted_palette",
                       "alpha": "converted_alpha"}
    for case, kind in expected_repair.items():
        repairs = []
        img = load_image(tmp_path / files[case], repairs=repairs)
        assert img.mode == "RGB" and repairs == [kind]


def test_alpha_is_composited_on_white_and_16bit_gray_scaled(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    rgba.putpixel((0, 0), (10, 20, 30, 255))
    rgba.save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.getpixel((1, 1)) == (255, 255, 255) and img.getpixel((0, 0)) == (10, 20, 30)
    arr = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    repairs = []
    out = np.asarray(load_image(tmp_path / "g16.png", repairs=repairs))
    assert repairs == ["converted_grayscale"]
    assert out[0, 0, 0] == 0 and out[1, 1, 0] == 255 and 0 < out[0, 1, 0] < out[1, 0, 0] < 255
    Image.new("RGB", (4, 4), (200, 30, 60)).convert("LAB").save(tmp_path / "lab.tif")
    repairs = []
    assert load_image(tmp_path / "lab.tif", repairs=repairs).mode == "RGB" and repairs == ["converted_other"]


def test_pixel_limit_guard_uses_header_only(tmp_path):
    # A header claiming 30000 x 30000 pixels is refused before any pixel is decoded, even with
    # a limit above PIL's own (which would otherwise only warn).
    with pytest.raises(BadImage) as err:
        load_image(png_bomb_bytes(12000, 12000), name="claims_144M.png", max_pixels=100_000_000)
    assert err.value.kind == "decompression_bomb" and "claims_144M.png" in str(err.value)
    Image.new("RGB", (50, 40)).save(tmp_path / "small.png")
    with pytest.raises(BadImage, match="2000 pixels > data.max_image_pixels=1999"):
        load_image(tmp_path / "small.png", max_pixels=1999)
    assert load_image(tmp_path / "small.png", max_pixels=2000).size == (50, 40)


# ---------------------------------------------------------------- captions

@pytest.mark.parametrize("raw,kind", [(None, "missing_field"), ("", "empty_caption"), (" \n\t ", "whitespace_caption"),
                                      (b"caf\xe9", "non_utf8_caption"), ("caf\udce9", "non_utf8_caption"),
                                      (3, "missing_field")])
def test_clean_caption_rejects(raw, kind):
    with pytest.raises(BadCaption) as err:
        clean_caption(raw)
    assert err.value.kind == kind


def test_clean_caption_replaces_newlines():
    assert clean_caption("A cat.\nA dog.\r\nA pen.".encode()) == "A cat. A dog. A pen."


def test_prefix_sampler_matches_spec_distribution():
    # docs/method.md §4: newlines -> spaces, split on ". ", k uniform in 1..n, first k sentences.
    caption = "A bear sits.\nIt holds a pen. The pen is red. Snow falls"
    sentences = ["A bear sits", "It holds a pen", "The pen is red", "Snow falls"]
    assert split_sentences(caption) == sentences
    expected = {". ".join(sentences[:k]): k for k in range(1, 5)}
    rng = random.Random(0)
    draws = Counter(expected[sample_caption(caption, "prefix", rng)] for _ in range(8000))
    assert set(draws) == {1, 2, 3, 4}
    for k in range(1, 5):  # 8000 draws: standard error of a frequency ~0.0048
        assert abs(draws[k] / 8000 - 0.25) < 0.02, draws
    # a one-sentence caption always comes back whole; the trailing period is kept
    assert sample_caption("One sentence only.", "prefix", rng) == "One sentence only."


def test_other_caption_modes():
    caption = "First part. Second part. Third part."
    rng = random.Random(1)
    assert sample_caption(caption, "full", rng) == caption
    assert sample_caption(caption, "first", rng) == "First part"
    picks = Counter(sample_caption(caption, "random_sentence", rng) for _ in range(3000))
    assert set(picks) == {"First part", "Second part", "Third part."}
    assert all(abs(v / 3000 - 1 / 3) < 0.04 for v in picks.values())
    with pytest.raises(ValueError, match="prefix, full, first, random_sentence"):
        sample_caption(caption, "words", rng)


# ---------------------------------------------------------------- readers and config

def test_csv_and_tsv_readers(tmp_path):
    path = make_csv_dataset(tmp_path / "c", 5)
    good, bad = read_csv(path)
    assert bad == [] and [r.caption for r in good] == [caption_for(i) for i in range(5)]
    assert all(r.image.startswith(str(tmp_path / "c" / "images")) for r in good)
    tsv = make_csv_dataset(tmp_path / "t", 3, separator="\t", image_key="img", caption_key="text")
    good, _ = read_csv(tsv, image_key="img", caption_key="text")
    assert len(good) == 3
    with pytest.raises(DataError, match=r"no column 'filepath'.*data.csv_image_key"):
        read_csv(tsv)


def test_sharegpt4v_reader_roots_and_eval_split(tmp_path):
    path = make_sharegpt4v_dataset(tmp_path / "d", 6, eval_records=2)
    # Move the sam images elsewhere: only the per-source root finds them.
    shutil.move(str(tmp_path / "d" / "sam"), str(tmp_path / "elsewhere_sam"))
    with pytest.raises(DataError, match=r"record 1: missing_file .*sam/images"):
        read_sharegpt4v(path)
    records = read_sharegpt4v(path, image_roots=f"sam={tmp_path / 'elsewhere_sam'}")
    assert [r.index for r in records] == list(range(8))
    assert records[1].image == str(tmp_path / "elsewhere_sam" / "images" / "sam00001.png")
    assert "\n" not in records[0].caption and records[0].caption.startswith("Image 0 shows")
    held_out = read_sharegpt4v(path, image_roots={"sam": str(tmp_path / "elsewhere_sam")}, stop=2)
    assert [r.index for r in held_out] == [0, 1]


def test_source_syntax_and_validation(tmp_path):
    csv_path = make_csv_dataset(tmp_path, 2)
    specs = parse_sources(f"{csv_path}@3::{csv_path}")
    assert [(s.kind, s.weight) for s in specs] == [("csv", 3.0), ("csv", 1.0)]
    for field, value, message in [("train", "", "data.train is empty"),
                                  ("train", str(tmp_path / "x.csv"), "does not exist"),
                                  ("train", str(tmp_path / "x.parquet"), "cannot tell the format"),
                                  ("train", f"{csv_path}@-1", "expected a positive number"),
                                  ("caption_mode", "words", "data.caption_mode='words'"),
                                  ("captions_per_image", 0, "data.captions_per_image"),
                                  ("max_bad_fraction", 1.5, "data.max_bad_fraction"),
                                  ("num_workers", -1, "data.num_workers"),
                                  ("image_roots", "coco=", "data.image_roots")]:
        cfg = DataConfig(train=csv_path)
        setattr(cfg, field, value)
        with pytest.raises(ValueError, match=message):
            cfg.validate()
    with pytest.raises(ValueError, match="identical captions"):
        DataConfig(train=csv_path, caption_mode="full", captions_per_image=2).validate()
    with pytest.raises(ValueError, match=r"shard\(s\) of .* do not exist"):
        parse_sources(str(tmp_path / "s" / "{000..003}.tar"))
    from data_fixtures import make_wds_shards
    pattern = make_wds_shards(tmp_path / "w", 6, per_shard=2)
    (by_pattern,) = parse_sources(pattern)
    (by_folder,) = parse_sources(str(tmp_path / "w" / "shards"))
    assert by_pattern.kind == by_folder.kind == "wds" and by_pattern.files == by_folder.files
    assert [f.rsplit("/", 1)[1] for f in by_folder.files] == ["000000.tar", "000001.tar", "000002.tar"]


# ---------------------------------------------------------------- check: every kind, every format

@pytest.mark.parametrize("fmt", ["csv", "sharegpt4v", "wds"])
def test_check_counts_every_kind_in_every_format(tmp_path, fmt):
    maker = {"csv": make_bad_csv_dataset, "sharegpt4v": make_bad_sharegpt4v_dataset, "wds": make_bad_wds_shards}[fmt]
    path, expected = maker(tmp_path)
    cfg = DataConfig(train=path, exclude_sharegpt4v_eval=False)
    report = check_dataset(cfg, workers=1)
    assert dict(+report.counts) == expected["counts"]
    assert report.records == expected["records"] and report.bad == expected["skipped"]
    assert len(report.good_records) == report.good == expected["records"] - expected["skipped"]
    assert not report.ok  # 10 of 23 bad is far above the default 1%
    # every event names its file and record
    assert all(path.split("{")[0].rstrip("/") in where or fmt == "wds" for _, where, _ in report.events)
    assert all((" record " in where) or (" sample " in where) for _, where, _ in report.events)


def test_cli_data_check(tmp_path, capsys):
    from smartclip.cli import main
    path, expected = make_bad_csv_dataset(tmp_path / "bad")
    report_file = tmp_path / "report.json"
    assert main(["data", "check", path, "--workers", "1", "--report", str(report_file)]) == 1
    out = capsys.readouterr().out
    assert "23 records, 13 usable, 10 skipped" in out and "FAIL" in out
    for kind in expected["counts"]:
        assert kind in out
    saved = json.loads(report_file.read_text())
    assert saved["counts"]["decompression_bomb"] == 1 and len(saved["events"]) == 15
    assert main(["data", "check", path, "--workers", "1", "--max-bad-fraction", "0.5"]) == 0
    good = make_csv_dataset(tmp_path / "good", 4)
    assert main(["data", "check", good, "--workers", "1"]) == 0
    assert "4 records, 4 usable, 0 skipped" in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path / "missing.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_data_package_imports_run_one_way():
    """No import cycle inside smartclip.data, counting imports inside functions too (issue 20)."""
    import ast
    from pathlib import Path
    folder = Path(__file__).resolve().parents[1] / "smartclip" / "data"
    graph = {}
    for path in folder.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps.update(a.name for a in node.names)
        graph[path.stem] = deps & {p.stem for p in folder.glob("*.py")}
    assert graph["streaming"] and "loader" not in graph["streaming"]
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for d in sorted(graph[m]):
            assert state.get(d) != "open", f"import cycle: {' -> '.join(stack + [m, d])}"
            if d not in state:
                visit(d, stack + [m])
        state[m] = "done"
    for m in sorted(graph):
        if m not in state:
            visit(m, [])
