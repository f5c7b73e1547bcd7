"""encode / search end to end on the micro model and real images: resumable encoding,
unreadable files listed, exact vs FAISS agreement, masked scoring, model check, CLI."""
import json

import numpy as np
import pytest
import torch

import smartclip
from smartclip import search
from smartclip.cli import main as cli
from conftest import real_images

N_IMAGES = 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A saved micro checkpoint and a folder of real images plus one broken file and a note."""
    root = tmp_path_factory.mktemp("search")
    torch.manual_seed(0)
    model = smartclip.create_model("smartclip-micro").eval()
    ckpt = smartclip.save_checkpoint(model, root / "ckpt")
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    for i, im in enumerate(real_images(N_IMAGES, 40)):
        im.save(images / ("sub" if i % 3 == 0 else "") / f"img{i:02d}.{'png' if i % 2 else 'jpg'}")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (images / "notes.txt").write_text("not an image")
    model, preprocess, tokenizer = smartclip.load(str(ckpt))
    return {"root": root, "ckpt": str(ckpt), "images": images, "model": model, "preprocess": preprocess,
            "tokenizer": tokenizer}


@pytest.fixture(scope="module")
def index(setup):
    s = setup
    return search.build_index(s["model"], s["preprocess"], s["images"], s["root"] / "index",
                              model_spec=s["ckpt"], shard_size=4)


def _direct_image_embeddings(s, paths):
    from PIL import Image
    pixels = torch.stack([s["preprocess"](Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        return s["model"].encode_image(pixels)


def test_index_matches_direct_encoding_and_lists_failures(setup, index):
    assert len(index) == N_IMAGES
    assert index.data.failed == [("broken.png", index.data.failed[0][1])]
    assert index.data.failed[0][1].startswith("not_an_image")
    assert index.data.meta["ignored_files"] == 1 and index.data.meta["failed"] == 1
    assert "sub/img00.jpg" in index.ids
    direct = torch.nn.functional.normalize(
        _direct_image_embeddings(setup, [index.image_path(i) for i in range(len(index))]), dim=-1)
    np.testing.assert_allclose(index.embeddings, direct.numpy(), atol=1e-5)


def test_resume_after_interruption(setup, monkeypatch, tmp_path):
    s = setup
    source = search.list_images(s["images"])
    calls = []
    real = search.encoding.embed_pil_images

    def counting(model, preprocess, images, batch_size, device):
        calls.append(len(images))
        return real(model, preprocess, images, batch_size, device)

    monkeypatch.setattr(search.encoding, "embed_pil_images", counting)

    def stop_after_second(shard):
        if shard == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search.encode_image_source(s["model"], s["preprocess"], source, tmp_path / "out", shard_size=4,
                                   on_shard=stop_after_second)
    assert not (tmp_path / "out" / "meta.json").exists()
    assert calls == [3, 4]  # shard 0 holds broken.png: 3 readable images
    calls.clear()
    resumed = search.encode_image_source(s["model"], s["preprocess"], source, tmp_path / "out", shard_size=4)
    assert calls == [3]  # only the last shard (11 files: 4 + 4 + 3) was encoded again
    fresh = search.encode_image_source(s["model"], s["preprocess"], source, tmp_path / "fresh", shard_size=11)
    assert resumed.ids == fresh.ids and resumed.failed == fresh.failed
    np.testing.assert_allclose(resumed.embeddings, fresh.embeddings, atol=1e-6)
    # a finished folder is reused as is; another model is refused, not mixed in
    calls.clear()
    search.encode_image_source(s["model"], s["preprocess"], source, tmp_path / "out", shard_size=4)
    assert calls == []
    torch.manual_seed(5)
    other = smartclip.create_model("smartclip-micro").eval()
    with pytest.raises(search.EncodingError, match="another input or model"):
        search.encode_image_source(other, s["preprocess"], source, tmp_path / "out", shard_size=4)


def test_csv_source_with_ids_and_missing_file(setup, tmp_path):
    s = setup
    csv = tmp_path / "list.csv"
    csv.write_text(f"id,filepath\na,{s['images'] / 'img01.png'}\nb,missing.jpg\n")
    source = search.list_images(csv)
    assert source.ids == ["a", "b"]
    es = search.encode_image_source(s["model"], s["preprocess"], source, tmp_path / "out")
    assert es.ids == ["a"] and es.failed == [("b", "missing_file: no such file")]
    bad = tmp_path / "bad.csv"
    bad.write_text("name,caption\nx,y\n")
    with pytest.raises(search.SourceError, match="no image path column; columns are \\['name', 'caption'\\]"):
        search.list_images(bad)


def test_text_encoding_counts_blank_and_truncated_lines(setup, tmp_path):
    s = setup
    lines = tmp_path / "texts.txt"
    lines.write_text("a cat\n\nthe dog " + "and more words " * 200 + "\n  \na bird\n")
    es = search.encode_text_source(s["model"], s["tokenizer"], search.read_text_lines(lines), tmp_path / "t")
    assert es.ids == ["1", "3", "5"]
    assert es.meta["blank_lines_skipped"] == 2 and es.meta["truncated"] == 1
    with torch.no_grad():
        direct = s["model"].encode_text(s["tokenizer"](["a cat"]), normalize=True)
    np.testing.assert_allclose(es.embeddings[0], direct[0].numpy(), atol=1e-5)
    loaded = search.EmbeddingSet.load(tmp_path / "t")
    assert loaded.ids == es.ids and np.array_equal(loaded.embeddings, es.embeddings)


def test_parquet_output(setup, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    es = search.EmbeddingSet(np.eye(3, 4, dtype=np.float32), ["a", "b", "c"], {"kind": "texts"})
    table = pq.read_table(search.write_parquet(es, tmp_path / "e.parquet"))
    assert table.column("id").to_pylist() == ["a", "b", "c"]
    assert np.array_equal(np.array(table.column("embedding").to_pylist(), np.float32), es.embeddings)


@pytest.mark.parametrize("backend", ["faiss", "faiss-hnsw"])
def test_faiss_and_exact_agree(setup, index, backend):
    if not search.faiss_available():
        pytest.skip("faiss-cpu not installed")
    s = setup
    exact = index.searcher(s["model"], s["preprocess"], s["tokenizer"], backend="exact")
    other = index.searcher(s["model"], s["preprocess"], s["tokenizer"], backend=backend)
    for query in ["a cup of coffee", "an astronaut", "a rocket launch at night"]:
        a, b = exact.text(query, k=N_IMAGES), other.text(query, k=N_IMAGES)
        assert [h.row for h in a.hits] == [h.row for h in b.hits]
        np.testing.assert_allclose([h.score for h in a.hits], [h.score for h in b.hits], atol=1e-5)
    a, b = exact.image(s["images"] / "img01.png", k=3), other.image(s["images"] / "img01.png", k=3)
    assert [h.row for h in a.hits] == [h.row for h in b.hits]
    assert a.hits[0].id == "img01.png" and a.hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_exact_scores_are_cosine_similarities(setup, index):
    s = setup
    result = index.searcher(s["model"], s["preprocess"], s["tokenizer"], backend="exact").text("a cat", k=4)
    with torch.no_grad():
        t = s["model"].encode_text(s["tokenizer"](["a cat"]), normalize=True)[0]
    z = torch.nn.functional.normalize(_direct_image_embeddings(setup, [index.image_path(i) for i in range(len(index))]),
                                      dim=-1)
    cos = (z @ t).numpy()
    assert [h.row for h in result.hits] == list(np.argsort(-cos)[:4])
    np.testing.assert_allclose([h.score for h in result.hits], np.sort(cos)[::-1][:4], atol=1e-5)


def test_masked_scoring_matches_spec_formula(setup, index):
    s = setup
    query = "a cup of coffee on a table"
    result = index.searcher(s["model"], s["preprocess"], s["tokenizer"]).text(query, k=N_IMAGES, masked=True)
    tokens = s["tokenizer"]([query])
    with torch.no_grad():
        tn = s["model"].encode_text(tokens, normalize=True)[0]
        m = s["model"].text_mask(tokens)[0]
        z = _direct_image_embeddings(setup, [index.image_path(i) for i in range(len(index))])  # unnormalised
    u = torch.nn.functional.normalize(z * m, dim=-1)  # u(i, q) = (z_i * m_q) / ||z_i * m_q||
    direct = (u @ tn).numpy()
    assert 0 < m.sum() < m.numel()  # the mask really removes dimensions, so masked != plain
    assert [h.row for h in result.hits] == list(np.argsort(-direct))
    np.testing.assert_allclose([h.score for h in result.hits], np.sort(direct)[::-1], atol=1e-5)
    assert result.mask.tolist() == (m > 0.5).tolist()
    plain = index.searcher(s["model"], s["preprocess"], s["tokenizer"]).text(query, k=N_IMAGES)
    assert not np.allclose([h.score for h in plain.hits], [h.score for h in result.hits])


def test_index_refuses_another_model(setup, index):
    torch.manual_seed(1)
    other = smartclip.create_model("smartclip-micro").eval()
    with pytest.raises(search.IndexModelMismatch, match="rebuild the index"):
        index.searcher(other, setup["preprocess"], setup["tokenizer"])


def test_cli_encode_build_query(setup, tmp_path, capsys):
    s = setup
    assert cli(["encode", "images", str(s["images"]), "--model", s["ckpt"], "--out", str(tmp_path / "e"),
                "--no-progress", "--shard-size", "3"]) == 0
    out = capsys.readouterr().out
    assert "10 images x 32 dims" in out and "broken.png: not_an_image" in out and "1 non-image files ignored" in out
    assert np.load(tmp_path / "e" / "embeddings.npy").shape == (10, 32)
    assert (tmp_path / "e" / "ids.txt").read_text().splitlines()[0] == "img01.png"
    assert cli(["search", "build", str(s["images"]), "--index", str(tmp_path / "ix"), "--model", s["ckpt"],
                "--no-progress"]) == 0
    capsys.readouterr()
    assert cli(["search", "query", "--index", str(tmp_path / "ix"), "--text", "a cat", "-k", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["hits"]) == 3 and result["mask"]["embed_dim"] == 32
    assert cli(["search", "query", "--index", str(tmp_path / "ix"), "--image", str(s["images"] / "img05.png"),
                "-k", "1"]) == 0
    assert "img05.png" in capsys.readouterr().out
    # a different model is refused with a clear error, not a traceback
    torch.manual_seed(2)
    other = smartclip.save_checkpoint(smartclip.create_model("smartclip-micro"), tmp_path / "other")
    assert cli(["search", "query", "--index", str(tmp_path / "ix"), "--text", "a cat", "--model", str(other)]) == 2
    assert "was built with model" in capsys.readouterr().err
    assert cli(["search", "query", "--index", str(tmp_path / "nope"), "--text", "x"]) == 2
    assert "not an index" in capsys.readouterr().err


def test_unfinished_run_of_another_model_is_not_mixed_in(setup, tmp_path):
    s = setup
    source = search.list_images(s["images"])

    def stop(shard):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search.encode_image_source(s["model"], s["preprocess"], source, tmp_path / "out", shard_size=4, on_shard=stop)
    torch.manual_seed(7)
    other = smartclip.create_model("smartclip-micro").eval()
    with pytest.raises(search.EncodingError, match="unfinished run of another input or model"):
        search.encode_image_source(other, s["preprocess"], source, tmp_path / "out", shard_size=4)
    es = search.encode_image_source(other, s["preprocess"], source, tmp_path / "out", shard_size=4, restart=True)
    assert es.meta["model_hash"] == smartclip.state_dict_hash(other) and len(es.ids) == N_IMAGES
    assert not (tmp_path / "out" / ".partial").exists()
