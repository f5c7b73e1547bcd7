"""TrainData: batches, ranks, resume, mixing, bad input during training."""
import re
from collections import Counter

import pytest
import torch

import smartclip
from data_fixtures import (caption_for, make_bad_csv_dataset, make_bad_sharegpt4v_dataset, make_bad_wds_shards, make_csv_dataset,
                           make_sharegpt4v_dataset, make_wds_shards, write_bad_inputs)
from smartclip.data import DataConfig, DataError, build_train_data


@pytest.fixture(scope="module")
def micro():
    torch.manual_seed(0)
    model = smartclip.create_model("smartclip-micro")
    return smartclip.image_transform(model, train=True), smartclip.get_tokenizer(model)


def build(micro, batch_size=4, **cfg):
    preprocess, tokenizer = micro
    kw = {k: cfg.pop(k) for k in ("rank", "world_size", "seed") if k in cfg}
    cfg.setdefault("num_workers", 0)
    return build_train_data(DataConfig(**cfg), preprocess=preprocess, tokenizer=tokenizer, batch_size=batch_size, **kw)


def ids(batch):
    """Record number of every image in a batch (captions begin 'Image i shows')."""
    firsts = [batch["texts"][j] for j in range(len(batch["texts"])) if j == 0 or batch["image_index"][j] != batch["image_index"][j - 1]]
    return [int(re.match(r"Image (\d+)", t).group(1)) for t in firsts]


def epoch_ids(data):
    return [i for b in data for i in ids(b)]


@pytest.fixture(scope="module")
def csv24(tmp_path_factory):
    return make_csv_dataset(tmp_path_factory.mktemp("csv24"), 24)


@pytest.fixture(scope="module")
def shards24(tmp_path_factory):
    return make_wds_shards(tmp_path_factory.mktemp("wds24"), 24, per_shard=4)  # 6 shards


def test_batch_layout_and_captions_per_image(micro, csv24):
    data = build(micro, batch_size=4, train=csv24, captions_per_image=3)
    assert len(data) == 6
    batch = next(iter(data))
    assert set(batch) == {"images", "tokens", "image_index", "texts"}
    assert batch["images"].shape == (4, 3, 32, 32) and batch["images"].dtype == torch.float32
    assert batch["tokens"].shape == (12, 248) and batch["tokens"].dtype == torch.long
    assert batch["image_index"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert len(batch["texts"]) == 12
    tok = smartclip.get_tokenizer("smartclip-micro")
    assert torch.equal(batch["tokens"], tok(batch["texts"]))
    # every caption is a sentence prefix of its own image's caption
    for text, row in zip(batch["texts"], batch["image_index"].tolist()):
        i = ids(batch)[row]
        assert caption_for(i).startswith(text)


@pytest.mark.parametrize("source", ["csv", "wds"])
def test_two_ranks_disjoint_and_cover_everything(micro, csv24, shards24, source):
    train = csv24 if source == "csv" else shards24
    seen = []
    for rank in range(2):
        data = build(micro, batch_size=4, train=train, caption_mode="first", rank=rank, world_size=2,
                     num_workers=0 if source == "csv" else 1)
        assert len(data) == 3
        seen.append(epoch_ids(data))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(24))


def test_shards_fewer_than_readers_split_by_sample(micro, tmp_path):
    train = make_wds_shards(tmp_path, 16, per_shard=8)  # 2 shards, 4 readers (2 ranks x 2 workers)
    seen = []
    for rank in range(2):
        data = build(micro, batch_size=2, train=train, caption_mode="first", rank=rank, world_size=2, num_workers=2)
        assert len(data) == 4
        seen.append(epoch_ids(data))
    assert sorted(seen[0] + seen[1]) == list(range(16))


def test_order_is_a_function_of_seed_and_epoch(micro, csv24):
    a = build(micro, train=csv24, caption_mode="first", seed=3)
    b = build(micro, train=csv24, caption_mode="first", seed=3, num_workers=2)
    first_a, first_b = epoch_ids(a), epoch_ids(b)
    assert first_a == first_b  # map-style order does not depend on the number of workers
    a.set_epoch(1)
    second = epoch_ids(a)
    assert sorted(second) == sorted(first_a) and second != first_a
    c = build(micro, train=csv24, caption_mode="first", seed=4)
    assert epoch_ids(c) != first_a


def _run(data, n=None):
    out = []
    for b in data:
        out.append(b)
        if n is not None and len(out) == n:
            break
    return out


def test_round_robin_position():
    from smartclip.data.streaming import round_robin_consumed
    assert round_robin_consumed([4, 4], 3) == ([2, 1], 1)
    assert round_robin_consumed([4, 2, 3], 7) == ([3, 2, 2], 1)   # next in the cycle: worker 1 (it has none left)
    assert round_robin_consumed([4, 2, 3], 8) == ([3, 2, 3], 0)
    assert round_robin_consumed([1, 0], 0) == ([0, 0], 0)


@pytest.mark.parametrize("source,workers,done", [("csv", 2, 3), ("wds", 2, 3), ("wds", 0, 3), ("wds-uneven", 2, 5)])
def test_resume_continues_with_next_unseen_batch(micro, csv24, shards24, tmp_path, source, workers, done):
    train = {"csv": csv24, "wds": shards24}.get(source)
    if source == "wds-uneven":  # 5 shards over 2 workers: 4 and 2 batches of 3; resume after 5
        train = make_wds_shards(tmp_path, 20, per_shard=4)
    kw = dict(train=train, batch_size=3, num_workers=workers, seed=7)
    full = _run(build(micro, **kw))
    assert len(full) == (6 if source == "wds-uneven" else 8)
    first = build(micro, **kw)
    _run(first, done)
    state = first.state_dict()
    assert state["epoch"] == 0 and state["batches_done"] == done
    resumed = build(micro, **kw)
    resumed.load_state_dict(state)
    rest = _run(resumed)
    assert len(rest) == len(full) - done
    for got, want in zip(rest, full[done:]):
        assert got["texts"] == want["texts"]
        assert torch.equal(got["images"], want["images"])  # same random crop too
        assert torch.equal(got["tokens"], want["tokens"])
    # and the next epoch starts from its beginning
    resumed.set_epoch(1)
    assert resumed.state_dict()["batches_done"] == 0 and len(_run(resumed)) == len(full)


def test_resume_refuses_a_different_layout(micro, csv24, shards24):
    state = build(micro, train=csv24, batch_size=4).state_dict()
    with pytest.raises(DataError, match="batch_size=4, this run has batch_size=3"):
        build(micro, train=csv24, batch_size=3).load_state_dict(state)
    state = build(micro, train=shards24, batch_size=4, num_workers=2).state_dict()
    with pytest.raises(DataError, match="data.num_workers"):
        build(micro, train=shards24, batch_size=4, num_workers=1).load_state_dict(state)


def test_weighted_mix_of_sources(micro, tmp_path):
    a = make_csv_dataset(tmp_path / "a", 8)
    b = make_sharegpt4v_dataset(tmp_path / "b", 8)
    data = build(micro, batch_size=4, train=f"{a}@3::{b}@1", samples_per_epoch=16, exclude_sharegpt4v_eval=False,
                 caption_mode="first")
    assert len(data) == 4
    # both sources carry the same captions, so count the plan's global ids: 0-7 csv, 8-15 json
    plan = data.backend.plan(0)
    counts = Counter(int(g) // 8 for g in plan)
    assert counts == {0: 12, 1: 4}
    assert len(set(plan[plan < 8].tolist())) == 8  # the up-weighted source is seen whole, then repeated


def test_weighted_mix_with_shards(micro, tmp_path):
    shards = make_wds_shards(tmp_path / "s", 12, per_shard=4)
    csv_path = make_csv_dataset(tmp_path / "c", 12)
    data = build(micro, batch_size=4, train=f"{shards}@1::{csv_path}@2", caption_mode="first")
    assert len(data) == 6  # 24 samples: 8 from shards, 16 from the csv (upsampled)
    assert sum(len(b["texts"]) for b in data) == 24


def test_sharegpt4v_held_out_records_never_trained_on(micro, tmp_path, monkeypatch):
    import smartclip.data.sources as sources
    monkeypatch.setattr(sources, "SHAREGPT4V_EVAL_SIZE", 4)  # the real split is 1000 records
    path = make_sharegpt4v_dataset(tmp_path, 8, eval_records=4)
    data = build(micro, batch_size=2, train=path, caption_mode="first")
    assert sorted(epoch_ids(data)) == list(range(4, 12))
    data = build(micro, batch_size=2, train=path, caption_mode="first", exclude_sharegpt4v_eval=False)
    assert sorted(epoch_ids(data)) == list(range(12))


@pytest.mark.parametrize("source", ["csv", "sharegpt4v", "wds"])
def test_bad_input_during_training_counted_exactly(micro, tmp_path, source, caplog):
    if source in ("csv", "sharegpt4v"):
        maker = make_bad_csv_dataset if source == "csv" else make_bad_sharegpt4v_dataset
        path, expected = maker(tmp_path)
        batch_size = 4  # 16 records left after the scan: 13 good + 3 that fail to decode
    else:
        path, expected = make_bad_wds_shards(tmp_path)
        batch_size = 7  # 21 complete samples
    data = build(micro, batch_size=batch_size, train=path, caption_mode="full", max_bad_fraction=1.0,
                 exclude_sharegpt4v_eval=False)
    texts = []
    with caplog.at_level("INFO", logger="smartclip.data"):
        for batch in data:
            assert batch["images"].shape[0] == batch_size  # substitutes keep batches full
            texts += batch["texts"]
    stats = data.stats()
    assert {k: v for k, v in stats.items() if k in expected["counts"] and v} == expected["counts"]
    assert stats["bad"] == expected["skipped"]
    assert stats["records_scanned"] == expected["records"]
    assert stats["records_read"] == len(data) * batch_size
    # the records read are exactly the good ones (substitutes repeat good ones only)
    assert set(texts) == set(expected["good_captions"])
    # every skipped kind is logged with its file and record
    logged = caplog.text
    for kind in ("truncated_image", "not_an_image", "decompression_bomb"):
        assert re.search(rf"skipped {kind}: {re.escape(path.split('{')[0])}\S* (record|sample) ", logged), kind


def test_max_bad_fraction_stops_the_run(micro, tmp_path):
    path, _ = make_bad_csv_dataset(tmp_path)
    with pytest.raises(DataError, match=r"7 of 23 records are bad .* data.max_bad_fraction=0.1"):
        build(micro, train=path, max_bad_fraction=0.1)
    # bad images that only fail when decoded trip it during the epoch
    odd = write_bad_inputs(tmp_path / "only_decode")
    good = make_csv_dataset(tmp_path / "only_decode", 5)
    with open(good, "a") as f:
        for case in ("truncated", "not_image", "bomb"):
            f.write(f"{odd[case]},{caption_for(99)}\n")
    data = build(micro, batch_size=4, train=good, max_bad_fraction=0.2)
    with pytest.raises(DataError, match=r"3 of 8 records are bad"):
        _run(data)


def test_too_few_samples_is_a_clear_error(micro, tmp_path):
    path = make_csv_dataset(tmp_path, 3)
    with pytest.raises(DataError, match="too few samples for one batch of 4"):
        build(micro, batch_size=4, train=path)
