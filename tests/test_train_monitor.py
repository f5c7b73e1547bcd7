"""What a training run prints: evaluations once; off a terminal, a progress line every tenth
of the run (or minute), not a carriage-return update per step."""
import io
import logging

import pytest

from smartclip.train import monitor as monitor_module
from smartclip.train.monitor import RunMonitor


@pytest.fixture()
def log_lines(caplog):
    caplog.set_level(logging.INFO, logger="smartclip.train")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "smartclip.train"]


def test_off_a_terminal_progress_is_a_line_each_tenth(tmp_path, monkeypatch, log_lines, capsys):
    monkeypatch.setattr(monitor_module.sys, "stderr", io.StringIO())  # a pipe or a file, not a terminal
    mon = RunMonitor(tmp_path, total_steps=50, tensorboard=False)
    assert mon.bar is None and mon.lines
    for step in range(1, 51):
        mon.train_step(step, {"loss": 3.0 - step / 100, "samples_per_s": 120.0})
    mon.close()
    lines = log_lines()
    assert len(lines) == 10, lines  # steps 5, 10, ..., 50
    assert lines[0].startswith("step 5/50 (10%) loss=2.95 img/s=120;") and "elapsed" in lines[0]
    assert lines[-1].startswith("step 50/50 (100%)") and lines[-1].endswith("0:00 left")
    assert "\r" not in capsys.readouterr().err + monitor_module.sys.stderr.getvalue()


def test_off_a_terminal_logged_steps_that_jump_over_a_tenth_still_report_it(tmp_path, monkeypatch, log_lines):
    monkeypatch.setattr(monitor_module.sys, "stderr", io.StringIO())
    mon = RunMonitor(tmp_path, total_steps=40, tensorboard=False)  # a tenth: 4 steps
    for step in [*range(3, 40, 3), 40]:  # train.log_every=3: 3, 6, 9, ... never 8, 16, 20, 28, 32
        mon.train_step(step, {"loss": 1.0}, advance=3)
    mon.close()
    # one line for each tenth passed since the previous logged step, and the last step
    assert [int(line.split("/")[0].split()[1]) for line in log_lines()] == [6, 9, 12, 18, 21, 24, 30, 33, 36, 40]


def test_off_a_terminal_a_slow_run_still_reports_each_minute(tmp_path, monkeypatch, log_lines):
    monkeypatch.setattr(monitor_module.sys, "stderr", io.StringIO())
    clock = [0.0]
    monkeypatch.setattr(monitor_module.time, "monotonic", lambda: clock[0])
    mon = RunMonitor(tmp_path, total_steps=1000, tensorboard=False)
    for step in range(1, 4):
        clock[0] += 61.0  # a minute per step: long before a tenth of the run
        mon.train_step(step, {"loss": 1.0})
    mon.close()
    assert [line.split(" (")[0] for line in log_lines()] == ["step 1/1000", "step 2/1000", "step 3/1000"]


def test_no_progress_means_no_progress_lines(tmp_path, monkeypatch, log_lines):
    monkeypatch.setattr(monitor_module.sys, "stderr", io.StringIO())
    mon = RunMonitor(tmp_path, total_steps=10, progress=False, tensorboard=False)
    for step in range(1, 11):
        mon.train_step(step, {"loss": 1.0})
    mon.close()
    assert log_lines() == []


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_on_a_terminal_an_evaluation_is_printed_once(tmp_path, monkeypatch, log_lines, capsys):
    terminal = _Terminal()
    monkeypatch.setattr(monitor_module.sys, "stderr", terminal)
    mon = RunMonitor(tmp_path, total_steps=4, tensorboard=False)
    assert mon.bar is not None
    mon.eval_results(2, {"retrieval:test.csv": {"metrics": {"i2t@1": 31.5, "t2i@1": 30.25}}})
    mon.close()
    # above the bar (tqdm.write), and not also through logging, which the CLI sends to the same terminal
    assert capsys.readouterr().out == "step 2 eval (percent): retrieval:test.csv: i2t@1=31.5 t2i@1=30.25\n"
    assert log_lines() == []


def test_off_a_terminal_an_evaluation_is_one_log_line(tmp_path, monkeypatch, log_lines):
    monkeypatch.setattr(monitor_module.sys, "stderr", io.StringIO())
    mon = RunMonitor(tmp_path, total_steps=4, tensorboard=False)
    mon.eval_results(2, {"retrieval:test.csv": {"metrics": {"i2t@1": 31.5}}})
    mon.close()
    assert log_lines() == ["step 2 eval (percent): retrieval:test.csv: i2t@1=31.5"]


def test_record_step_adds_the_throughput_since_the_previous_record(tmp_path):
    from smartclip.train import read_metrics
    mon = RunMonitor(tmp_path, total_steps=10, start_step=2, progress=False, tensorboard=False)
    first = mon.record_step(5, {"loss": 1.5, "epoch": 0}, batch=8, after={"nonfinite_skipped": 0})
    second = mon.record_step(6, {"loss": 1.25, "epoch": 0}, batch=8)
    mon.close()
    assert list(first) == ["loss", "epoch", "steps_per_s", "samples_per_s", "nonfinite_skipped"]
    for record in (first, second):
        assert record["steps_per_s"] > 0
        assert record["samples_per_s"] == pytest.approx(8 * record["steps_per_s"])
    written = read_metrics(tmp_path / "metrics.jsonl", "train")
    assert [r["step"] for r in written] == [5, 6] and written[0]["samples_per_s"] == first["samples_per_s"]
