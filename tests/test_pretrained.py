"""Released weights by name (smartclip.pretrained) and hf-hub: repositories, read through
huggingface_hub's real cache layout (models--ORG--NAME/refs/main, snapshots/REV/FILE, blobs/).

Nothing here mocks huggingface_hub: files are put in its cache the way it lays them out, or
served by a small local HTTP server standing in for the hub (HF_ENDPOINT), so its own download
code runs."""
import hashlib
import http.server
import os
import threading

import pytest
import torch

import smartclip
import smartclip.pretrained as pretrained
from smartclip.checkpoint import ModelNotFoundError
from smartclip.cli import main as cli
from smartclip.fileio import sha256_file
from data_fixtures import make_csv_dataset

REVISION = "0123456789abcdef0123456789abcdef01234567"


def put_in_hub_cache(cache, repo, files, revision=REVISION):
    """Lay ``files`` ({name: path}) out as huggingface_hub does: content in blobs/, named by
    hash, and snapshots/REV/NAME linking to it; refs/main names the revision."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    snapshot, blobs = folder / "snapshots" / revision, folder / "blobs"
    snapshot.mkdir(parents=True, exist_ok=True)
    blobs.mkdir(exist_ok=True)
    for name, source in files.items():
        blob = blobs / sha256_file(source)
        if not blob.exists():
            os.link(source, blob)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty cache of our own, offline, with any earlier reachability probe forgotten."""
    import huggingface_hub.constants as hub
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(pretrained, "_reachable", {})
    return cache


def _online(monkeypatch):
    """Downloads allowed (huggingface_hub honours either variable, read when it is imported;
    conftest sets both)."""
    import huggingface_hub.constants as hub
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


def _one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    return text


def _same_model(a, b):
    assert a.options == b.options and a.mask_trained == b.mask_trained and a.context_length == b.context_length
    assert type(a.transformer.resblocks[0].mlp.gelu) is type(b.transformer.resblocks[0].mlp.gelu)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    # an untrained mask network (Long-CLIP's files have none) is freshly initialised at each load
    compared = [k for k in sa if a.mask_trained or not k.startswith("mask_net.")]
    differ = [k for k in compared if not torch.equal(sa[k], sb[k])]
    assert not differ, differ


# ---------------------------------------------------------------------------- the registry
def test_registry_names_architecture_source_and_paper_numbers():
    b16 = pretrained.get_pretrained("ViT-B-16", "smartclip")
    assert (b16.hf_hub, b16.filename, b16.architecture) == ("Shaoan/SmartCLIP", "smartclip_b16.pt", "ViT-B-16")
    assert pretrained.get_pretrained("ViT-L-14", "smartclip").filename == "smartclip_l14.pt"
    assert pretrained.get_pretrained("ViT-B/16", "longclip").hf_hub == "BeichenZhang/LongCLIP-B"
    long_l = pretrained.get_pretrained("ViT-L-14", "longclip")
    assert (long_l.hf_hub, long_l.filename, long_l.mask_trained) == ("BeichenZhang/LongCLIP-L", "longclip-L.pt", False)
    for entry in pretrained.RELEASED.values():  # OpenAI CLIP fine-tunes: QuickGELU, stretched 20 + 4 * 57
        assert entry.model_cfg == {"quick_gelu": True} and entry.license
        assert entry.options == smartclip.model.DEFAULT_OPTIONS
    assert b16.paper["Urban1k"] == (90.5, 87.3) and pretrained.get_pretrained("ViT-L-14", "smartclip").paper["COCO"] == \
        (66.1, 48.4)  # docs/method.md §6


def test_models_command_lists_every_tag_with_its_source(capsys):
    assert cli(["models", "--pretrained"]) == 0
    out = capsys.readouterr().out
    assert "ViT-B-16:smartclip" in out and "Shaoan/SmartCLIP/smartclip_b16.pt" in out
    assert "ViT-L-14:longclip" in out and "BeichenZhang/LongCLIP-L/longclip-L.pt" in out
    assert "ViT-B-16:openai" in out and "timm/vit_base_patch16_clip_224.openai" in out  # open_clip's, as today


def test_a_registered_tag_is_described_from_the_registry(capsys):
    assert cli(["models", "ViT-B-16:longclip"]) == 0  # nothing downloaded: the architecture is known
    assert "embed 512" in capsys.readouterr().out


# ------------------------------------------------------- released files in the hub's cache
@pytest.fixture(scope="module")
def released_b16(tmp_path_factory):
    """A ViT-B/16 SmartCLIP file and a Long-CLIP file in the authors' layout (docs/method.md §8: fp16 state
    dicts, OpenAI names, two [248, 512] positional tables, mask_net.* only in SmartCLIP's)."""
    torch.manual_seed(0)
    cfg = {**smartclip.get_model_config("ViT-B-16"), "quick_gelu": True}
    model = smartclip.build_model(cfg)
    with torch.no_grad():
        model.positional_embedding_res.add_(0.01 * torch.randn_like(model.positional_embedding_res))
    state = {k: v.detach().half() for k, v in model.state_dict().items()}
    folder = tmp_path_factory.mktemp("released")
    torch.save(state, folder / "smartclip_b16.pt")
    torch.save({k: v for k, v in state.items() if not k.startswith("mask_net.")}, folder / "longclip-B.pt")
    return folder


@pytest.mark.slow  # two ViT-B/16 files of 300 MB, each loaded twice
def test_released_tags_load_offline_from_the_cache_as_by_path(released_b16, hub_cache):
    smart = put_in_hub_cache(hub_cache, "Shaoan/SmartCLIP", {"smartclip_b16.pt": released_b16 / "smartclip_b16.pt"})
    long = put_in_hub_cache(hub_cache, "BeichenZhang/LongCLIP-B", {"longclip-B.pt": released_b16 / "longclip-B.pt"})
    tokens = smartclip.get_tokenizer("ViT-B-16")(["a bear holding a pen"])
    for tag, path, mask_trained in (("ViT-B-16:smartclip", smart / "smartclip_b16.pt", True),
                                    ("ViT-B-16:longclip", long / "longclip-B.pt", False)):
        by_tag, _, _ = smartclip.load(tag)
        by_path, _, _ = smartclip.load(str(path))
        _same_model(by_tag, by_path)
        assert by_tag.mask_trained is mask_trained and by_tag.model_name == tag
        assert isinstance(by_tag.mask_net.resblocks[0].mlp.gelu, type(by_tag.transformer.resblocks[0].mlp.gelu))
        with torch.no_grad():
            assert torch.equal(by_tag.encode_text(tokens), by_path.encode_text(tokens))
        del by_tag, by_path


# ----------------------------------------------------------------- not cached, not reachable
def test_uncached_tag_offline_is_one_line(hub_cache, capfd):
    with pytest.raises(ModelNotFoundError) as info:
        smartclip.load("ViT-L-14:smartclip")
    text = _one_line(info)
    for part in ("ViT-L-14:smartclip", "Shaoan/SmartCLIP/smartclip_l14.pt", str(hub_cache), "HF_HUB_OFFLINE=1",
                 "https://huggingface.co/Shaoan/SmartCLIP/blob/main/smartclip_l14.pt", "pass its path"):
        assert part in text, text
    assert "Retrying" not in "".join(capfd.readouterr())


@pytest.mark.parametrize("spec", ["ViT-B-16:longclip", "ViT-B-16:openai", "hf-hub:someone/some-model"])
def test_unreachable_hub_is_detected_once_without_retries(spec, hub_cache, monkeypatch, capfd):
    """No HF_HUB_OFFLINE, and nothing listening where the hub should be: the probe (with a
    small timeout) finds it, and only the cache is read."""
    _online(monkeypatch)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setenv("SMARTCLIP_HUB_TIMEOUT", "0.5")
    with pytest.raises(ModelNotFoundError) as info:
        smartclip.create_model(spec)
    text = _one_line(info)
    assert "the hub cannot be reached" in text and text.startswith(spec), text
    assert "Retrying" not in "".join(capfd.readouterr())
    assert pretrained._reachable == {"http://127.0.0.1:9": False}  # probed once, remembered


@pytest.mark.parametrize("offline", [True, False])
def test_eval_command_offline_is_one_line_without_retries(offline, hub_cache, monkeypatch, capfd, tmp_path):
    """`smartclip eval --model ViT-L-14:openai` with no network: one line, not a minute of retries.
    The data exist (eval checks them before the model), so the model is what fails."""
    pairs = make_csv_dataset(tmp_path / "pairs", 2)
    if not offline:
        _online(monkeypatch)
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
        monkeypatch.setenv("SMARTCLIP_HUB_TIMEOUT", "0.5")
    assert cli(["eval", "--model", "ViT-L-14:openai", "--benchmarks", f"retrieval:{pairs}", "--out",
                str(tmp_path / "eval")]) == 2
    out, err = capfd.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("smartclip eval: error: ViT-L-14:openai:"), err
    assert ("HF_HUB_OFFLINE=1" if offline else "the hub cannot be reached") in lines[0]
    assert "Retrying" not in out + err


def test_uncached_hf_hub_repository_is_one_line(hub_cache):
    with pytest.raises(ModelNotFoundError) as info:
        smartclip.load("hf-hub:someone/some-model")
    text = _one_line(info)
    assert "someone/some-model" in text and "smartclip_config.json" in text and "smartclip_hf.json" in text, text


def test_hf_hub_of_a_released_repository_names_its_tags(hub_cache):
    with pytest.raises(ModelNotFoundError) as info:
        smartclip.load("hf-hub:Shaoan/SmartCLIP")
    assert "load them by tag: ViT-B-16:smartclip, ViT-L-14:smartclip" in _one_line(info)


def test_malformed_hf_hub_spec(hub_cache):
    with pytest.raises(ModelNotFoundError, match="expected hf-hub:ORG/NAME"):
        smartclip.load("hf-hub:no-org")


# --------------------------------------------------------------------------------- hf-hub:
@pytest.mark.parametrize("kind", ["checkpoint", "hf"])
def test_hf_hub_repository_from_the_cache_equals_the_folder(kind, tmp_path, hub_cache, micro_model):
    if kind == "hf":
        pytest.importorskip("transformers")
        folder = smartclip.export(micro_model, tmp_path / "export", format="hf")
    else:
        folder = smartclip.save_checkpoint(micro_model, tmp_path / "export")
    put_in_hub_cache(hub_cache, "someone/micro", {p.name: p for p in folder.iterdir() if p.is_file()})
    by_hub, _, tokenizer = smartclip.load("hf-hub:someone/micro")
    by_folder, _, _ = smartclip.load(str(folder))
    _same_model(by_hub, by_folder)
    assert tokenizer.context_length == 248
    assert smartclip.get_tokenizer("hf-hub:someone/micro").context_length == 248


# ------------------------------------------------------- downloads, through a stand-in hub
class _Hub(http.server.ThreadingHTTPServer):
    files: dict  # (repo, filename) -> bytes


class _HubHandler(http.server.BaseHTTPRequestHandler):
    """Just enough of the hub's resolve endpoint for hf_hub_download: commit, ETag, size."""

    def _headers(self):
        repo, _, rest = self.path.lstrip("/").partition("/resolve/")
        _, _, filename = rest.partition("/")
        body = self.server.files.get((repo, filename))
        if body is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        self.send_response(200)
        self.send_header("X-Repo-Commit", REVISION)
        self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return body

    def do_HEAD(self):
        self._headers()

    def do_GET(self):
        body = self._headers()
        if body is not None:
            self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def stand_in_hub(hub_cache, monkeypatch):
    server = _Hub(("127.0.0.1", 0), _HubHandler)
    server.files = {}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _online(monkeypatch)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    yield server
    server.shutdown()
    server.server_close()


def test_download_fills_the_cache_then_offline_reads_it(tmp_path, stand_in_hub, hub_cache, micro_model,
                                                        monkeypatch):
    folder = smartclip.save_checkpoint(micro_model, tmp_path / "ckpt")
    stand_in_hub.files = {("someone/micro", p.name): p.read_bytes() for p in folder.iterdir()}
    downloaded, _, _ = smartclip.load("hf-hub:someone/micro")
    _same_model(downloaded, smartclip.load_checkpoint(str(folder)))
    snapshot = hub_cache / "models--someone--micro" / "snapshots" / REVISION
    assert sorted(p.name for p in snapshot.iterdir()) == ["model.safetensors", "smartclip_config.json"]
    stand_in_hub.files = {}  # the hub forgets it; offline, the cache still has it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again, _, _ = smartclip.load("hf-hub:someone/micro")
    _same_model(again, downloaded)


def test_a_file_the_hub_does_not_have_is_one_line(stand_in_hub):
    with pytest.raises(ModelNotFoundError) as info:
        smartclip.load("ViT-B-16:smartclip")
    text = _one_line(info)
    assert "Shaoan/SmartCLIP/smartclip_b16.pt" in text and "RemoteEntryNotFoundError" in text, text


def test_other_download_failures_surface_as_themselves(tmp_path, stand_in_hub, monkeypatch, micro_model):
    """A planted failure that is not the hub's (the cache folder cannot be made): not reported as
    'not cached / offline', but as what it is."""
    folder = smartclip.save_checkpoint(micro_model, tmp_path / "ckpt")
    stand_in_hub.files = {("someone/micro", p.name): p.read_bytes() for p in folder.iterdir()}
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache should be")
    monkeypatch.setenv("HF_HUB_CACHE", str(blocker))
    with pytest.raises(OSError) as info:
        smartclip.load("hf-hub:someone/micro")
    assert not isinstance(info.value, ModelNotFoundError)
    assert isinstance(info.value, (NotADirectoryError, FileExistsError)), repr(info.value)
