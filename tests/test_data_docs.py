"""The examples in docs/data.md run as written and print what the page says."""
import shlex
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "data.md"


def _blocks(lang):
    """Fenced code blocks of ``docs/data.md`` whose fence names ``lang`` ("" = no language)."""
    blocks, current, fence_lang = [], None, None
    for line in DOC.read_text().splitlines(keepends=True):
        if line.startswith("```"):
            if current is None:
                current, fence_lang = [], line[3:].strip()
            else:
                if fence_lang == lang:
                    blocks.append("".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def test_python_example_runs(capsys):
    (code,) = _blocks("python")
    exec(compile(code, str(DOC), "exec"), {"__name__": "__doc_example__"})
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "2"
    assert out[1] == "torch.Size([2, 3, 32, 32]) torch.Size([4, 248]) [0, 0, 1, 1]"
    assert out[-2].startswith("{'epoch': 1, 'batches_done': 2")
    assert out[-1] == "8"


def _page_command(capsys, prefix: str):
    """The page's command starting with ``prefix`` (as arguments) and the output printed after
    it, with the files it reads made by the page's Python example."""
    plain = _blocks("")
    command = next(b for b in plain if b.startswith(prefix))
    test_python_example_runs(capsys)  # makes the files the command reads
    return shlex.split(command)[1:], plain[plain.index(command) + 1]


def test_data_check_example_prints_what_the_page_says(capsys):
    from smartclip.cli import main
    args, printed = _page_command(capsys, "smartclip data check")
    assert main(args) == 0
    assert capsys.readouterr().out == printed


def test_prepare_example_prints_what_the_page_says(capsys):
    import shutil
    from smartclip.cli import main
    args, printed = _page_command(capsys, "smartclip data prepare")
    out = args[args.index("--out") + 1]
    shutil.rmtree(out, ignore_errors=True)
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == printed.strip()
    assert lines[-1].endswith(f"{out}/manifest.json")
    assert main(args) == 0  # a rerun over the finished folder
    assert "is already prepared: 4 samples in 1 shard(s)" in capsys.readouterr().out
    assert main(["data", "check", out, "--workers", "1"]) == 0
    assert "1 shard(s) match manifest.json (sha256)" in capsys.readouterr().out
