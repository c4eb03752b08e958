"""A newcomer's second hour (issue 21): what a first user meets running the README's
commands: help that reads cleanly, no warnings they did not cause, CLAP and toy training
that say what they do, and a status line that log lines do not glue onto."""

from __future__ import annotations

import argparse
import itertools
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge import cli
from bridge.cli import toy as toy_cli
from bridge.live.options import ServeOptions

REPO = Path(__file__).resolve().parent.parent


def steerbridge(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "bridge.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser, toy's sub-commands included, by its words."""
    def walk(parser: argparse.ArgumentParser, words: str) -> dict[str, argparse.ArgumentParser]:
        found = {words: parser}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found.update(walk(sub, f"{words} {name}".strip()))
        return found
    return walk(cli.build_parser(), "")


# --- --help ----------------------------------------------------------------------------------
def test_help_shows_no_empty_or_doubled_defaults_and_no_raw_markup() -> None:
    for words, parser in _parsers().items():
        text = " ".join(parser.format_help().split())
        for defect in ("(default: None)", "(default: )", "``"):
            assert defect not in text, (words, defect)
        assert not re.search(r"\(default \d+\) \(default", text), words


def test_verbose_works_after_the_command_too() -> None:
    parser = cli.build_parser()
    argv = {"render": ["--out", "x.wav"], "extract": ["--concept", "tempo", "--out", "x"],
            "analyze": ["--out", "x"], "save-tiny": ["x"], "toy world": ["--concept", "tempo", "--out", "x"]}
    for words in [w for w in _parsers() if w and w != "toy"]:
        args = parser.parse_args([*words.split(), "-v", *argv.get(words, [])])
        assert args.verbose_after_command, words
    args = parser.parse_args(["-v", "render", "--out", "x.wav"])  # before it, as ever
    assert args.verbose and not args.verbose_after_command
    args = parser.parse_args(["render", "--out", "x.wav"])
    assert not (args.verbose or args.verbose_after_command)


def test_the_toy_training_defaults_in_help_are_the_training_s_own() -> None:
    from steering_core.paths import data_dir
    from steering_core.toy.model import TOY_MODEL_DIR
    from steering_core.toy.training import TrainSettings

    settings = TrainSettings()
    spelled_out = (toy_cli.CODEC_STEPS, toy_cli.LM_STEPS, toy_cli.LM_TEMPO_STEPS)
    assert spelled_out == (settings.codec_steps, settings.lm_steps, settings.lm_tempo_steps)
    train = _parsers()["toy train"]
    out = next(a for a in train._actions if a.dest == "out")
    assert Path(out.default) == data_dir("toy-model") and Path(out.default) != TOY_MODEL_DIR
    render = next(a for a in _parsers()["render"]._actions if a.dest == "threads")
    assert render.default == ServeOptions.threads


# --- noise ------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["toy", "tiny"])
def test_a_render_prints_no_warning_and_no_bar(tmp_path, model) -> None:
    run = steerbridge("render", "--model", model, "--seconds", "1", "--out", "o.wav", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stderr == "", run.stderr[-2000:]  # no FutureWarning, no "Loading weights", no token warning


def test_building_the_untrained_toy_prints_no_token_warning() -> None:
    run = subprocess.run([sys.executable, "-c", "from steering_core.toy.model import build_untrained_toy; "
                          "build_untrained_toy(1)"], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0 and run.stderr == "", run.stderr[-2000:]


def test_render_threads_default_to_serve_s_rule_and_verbose_says_so(tmp_path) -> None:
    run = steerbridge("render", "-v", "--model", "tiny", "--seconds", "0.5", "--out", "o.wav", cwd=tmp_path)
    assert run.returncode == 0 and "; 1 torch threads" in run.stderr and "rtf" in run.stderr, run.stderr[-2000:]
    run = steerbridge("render", "-v", "--threads", "2", "--model", "tiny", "--seconds", "0.5", "--out", "o.wav",
                      cwd=tmp_path)
    assert run.returncode == 0 and "; 2 torch threads" in run.stderr, run.stderr[-2000:]


# --- analyze --clap -----------------------------------------------------------------------------
def test_an_uncached_clap_offline_is_one_line_before_any_work(tmp_path) -> None:
    started = time.perf_counter()
    run = steerbridge("analyze", "--model", "tiny", "--concept", "timbre", "--clap", "laion/clap-htsat-unfused",
                      "--out", "report", cwd=tmp_path, env={"HF_HOME": str(tmp_path / "hf")})
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr[-2000:]
    assert "--clap none" in run.stderr and not (tmp_path / "report").exists()
    assert time.perf_counter() - started < 20


# --- toy check -------------------------------------------------------------------------------------
def test_a_known_result_of_toy_check_data_is_explained_and_does_not_fail_it() -> None:
    line, passed = toy_cli.data_checks_line("timbre", {"cosine": True, "steers_the_same_way": False})
    assert passed and "not met (known:" in line and "RESULTS" in line and "FAILED" not in line
    line, passed = toy_cli.data_checks_line("tempo", {"cosine": True, "steers_the_same_way": False})
    assert not passed and "steers_the_same_way FAILED" in line
    line, passed = toy_cli.data_checks_line("timbre", {"cosine": False, "steers_the_same_way": True})
    assert not passed and "cosine FAILED" in line and "steers_the_same_way ok" in line


# --- toy train stops its worker ------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _workers(pid: int) -> list[int]:
    """The spawned worker processes among ``pid``'s children (not multiprocessing's resource tracker)."""
    found = []
    for child in _children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except FileNotFoundError:
            pass
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads children from /proc")
@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_toy_train_stops_its_worker_on_a_signal_with_one_line(tmp_path, how) -> None:
    # SIGINT as a terminal leaves it: a suite started in the background (`cmd &`) has it ignored,
    # and an ignored SIGINT is inherited, so the run would never see the Ctrl-C.
    train = subprocess.Popen([sys.executable, "-m", "bridge.cli", "toy", "train", "--out", str(tmp_path / "out"),
                              "--work", str(tmp_path / "work")], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                             env={**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"})
    try:
        deadline = time.monotonic() + 120
        while not _workers(train.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        (worker,) = _workers(train.pid)
        time.sleep(5)  # the worker is training now (or importing torch)
        if how == "SIGTERM":
            train.send_signal(signal.SIGTERM)
        else:  # a terminal's Ctrl-C reaches the whole process group
            os.killpg(train.pid, signal.SIGINT)
        _, err = train.communicate(timeout=60)
    finally:
        if train.poll() is None:
            os.killpg(train.pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(worker), "the codec worker is still training"
    lines = [line for line in err.strip().splitlines() if line.strip()]
    bar = re.compile(r"\|\s*\d+/\d+ \[")  # a progress bar's frame, torn down (x step/s, or x s/step when slow)
    lines = [line for line in lines if not bar.search(line)]
    assert "Traceback" not in err and len(lines) == 1 and "stopped" in lines[0], err[-3000:].replace("\r", "\n")
    assert train.returncode == (143 if how == "SIGTERM" else 130)


# --- serve's status line -------------------------------------------------------------------------
def test_log_lines_do_not_glue_onto_serve_s_status_line_in_a_terminal(tmp_path) -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = str(probe.getsockname()[1])
    probe.close()
    leader, follower = pty.openpty()
    serve = subprocess.Popen([sys.executable, "-m", "bridge.cli", "serve", "--model", "tiny", "--audio-out", "none",
                              "--osc-port", port, "--duration", "4"], cwd=tmp_path, stdin=follower, stdout=follower,
                             stderr=follower, env={**os.environ, "PYTHONPATH": str(REPO)})
    os.close(follower)
    seen = b""
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], 120)
            if not ready:
                break
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the other end closed
                break
            if not chunk:
                break
            seen += chunk
            if b"xruns" in seen:  # the status line is up: make the server log a line under it
                sender.sendto(b"/nosuch\x00,\x00\x00\x00", ("127.0.0.1", int(port)))
    finally:
        sender.close()
        serve.wait(timeout=60)
        os.close(leader)
    text = seen.decode(errors="replace")
    assert "xruns" in text and "stopped after" in text and "/nosuch" in text, text[-2000:]
    # what the terminal shows: each \r returns to the line's start and ESC[K erases it
    for raw in text.replace("\r\n", "\n").split("\n"):
        shown = raw.split("\x1b[K")[-1].split("\r")[-1] if "\x1b[K" in raw else raw
        parts = raw.split("\r")
        for before, after in itertools.pairwise(parts):
            if "xruns" in before and re.match(r"\d\d:\d\d:\d\d ", after):
                pytest.fail(f"a log line overwrote the status line without erasing it: {raw!r}")
        assert not re.search(r"xruns.*\d\d:\d\d:\d\d (INFO|WARNING|ERROR)", shown), raw
