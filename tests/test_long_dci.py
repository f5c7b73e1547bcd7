"""Long-DCI: registered like DCI, read from the DCI release's own layout as TULIP builds it
(every annotation file in sorted name order, extra_caption alone, empty ones skipped)."""
import json

import pytest
import torch

import smartclip
from conftest import real_images
from smartclip.eval import (DatasetFormatError, IncompleteBenchmarkError, encode_images, encode_texts, evaluate,
                            get_benchmark, list_benchmarks, retrieval_recall)
from smartclip.eval.datasets import load_long_dci

# file name -> (image, short_caption, extra_caption); names sort as strings: sa_10 < sa_2 < sa_3
RECORDS = {
    "sa_2.json": ("sa_2.jpg", "A cat.", "A tabby cat sits on a striped rug, looking up at the camera with its ears "
                                        "forward; behind it a wooden door is half open."),
    "sa_10.json": ("sa_10.jpg", "An astronaut.", "An astronaut in a white suit holds a flag; the helmet visor "
                                                 "reflects the lunar module.  "),
    "sa_3.json": ("sa_3.jpg", "Coffee.", ""),  # no long caption: skipped, counted
    "sa_7.json": ("sa_7.jpg", "A rocket.", "A rocket stands on the launch pad under a clear sky, steam rising "
                                           "from its base."),
    "sa_5.json": ("sa_5.jpg", "Galaxies.", "   "),  # whitespace is not empty: kept, as TULIP keeps it
}


def write_dci_release(root):
    """densely_captioned_images/{splits.json, annotations/<name>.json, photos/<image>}; splits.json
    names only some annotations (Long-DCI reads them all)."""
    base = root / "densely_captioned_images"
    (base / "annotations").mkdir(parents=True)
    (base / "photos").mkdir()
    for im, (name, (image, short, extra)) in zip(real_images(len(RECORDS), 48), RECORDS.items()):
        im.save(base / "photos" / image)
        (base / "annotations" / name).write_text(json.dumps(
            {"image": image, "short_caption": short, "extra_caption": extra, "mask_data": {}}))
    (base / "splits.json").write_text(json.dumps({"test": ["sa_2.json", "sa_3.json"]}))
    return base


def test_long_dci_reads_every_annotation_in_name_order_and_skips_empty_captions(tmp_path):
    base = write_dci_release(tmp_path)
    data = load_long_dci(tmp_path)
    order = ["sa_10.json", "sa_2.json", "sa_5.json", "sa_7.json"]
    assert data.images == [base / "photos" / RECORDS[n][0] for n in order]
    assert data.captions == [RECORDS[n][2] for n in order]
    assert data.text_to_image == [0, 1, 2, 3]
    assert data.notes == {"annotations": 5, "empty_extra_caption": 1}
    (base / "annotations" / "sa_9.json").write_text(json.dumps({"image": "sa_9.jpg", "short_caption": "x"}))
    with pytest.raises(DatasetFormatError, match=r"sa_9.json: missing field 'extra_caption'"):
        load_long_dci(tmp_path)


def test_long_dci_is_registered_like_dci_and_scores_like_direct_computation(tmp_path, micro_model, monkeypatch):
    monkeypatch.delenv("SMARTCLIP_DCI_ROOT", raising=False)
    base = write_dci_release(tmp_path / "dci")
    assert "long-dci" in list_benchmarks()
    # the protocol's 7,602 pairs are expected unless a deliberate subset is declared
    with pytest.raises(IncompleteBenchmarkError, match="7598 of the protocol's 7602 images are not listed"):
        evaluate(micro_model, ["long-dci"], root=str(tmp_path), progress=False)
    result = evaluate(micro_model, ["long-dci"], root=str(tmp_path), progress=False,
                      options={"long-dci": {"expected_images": 4}})["long-dci"]
    assert result["counts"]["images"] == 4 and result["counts"]["texts"] == 4
    assert result["counts"]["empty_extra_caption"] == 1 and result["counts"]["annotations"] == 5
    assert "extra_caption alone" in result["protocol"] and "SIZE OVERRIDDEN" in result["protocol"]
    order = ["sa_10.json", "sa_2.json", "sa_5.json", "sa_7.json"]
    tokenizer, preprocess = smartclip.get_tokenizer(micro_model), smartclip.image_transform(micro_model)
    with torch.no_grad():
        direct = retrieval_recall(encode_images(micro_model, preprocess, [base / "photos" / RECORDS[n][0]
                                                                          for n in order]),
                                  encode_texts(micro_model, tokenizer, [RECORDS[n][2] for n in order]), [0, 1, 2, 3])
    assert result["metrics"] == pytest.approx(direct)
    # the same data root serves dci (short + extra caption, splits.json) and long-dci
    dci = get_benchmark("dci", root=str(tmp_path), expected_images=2)._load()
    assert dci.captions == [f"{RECORDS['sa_2.json'][1]}\n{RECORDS['sa_2.json'][2]}", "Coffee."]
