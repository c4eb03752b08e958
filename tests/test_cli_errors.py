"""The command line explains itself and fails fast: help with defaults, no torch for
--help, and one line (exit 2, no traceback) for every bad argument or file."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge import cli

REPO = Path(__file__).resolve().parent.parent


def steerbridge(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "bridge.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _elapsed(*argv: str) -> float:
    start = time.perf_counter()
    subprocess.run(argv, capture_output=True, check=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    return time.perf_counter() - start


def test_help_and_version_import_no_torch() -> None:
    code = ("import sys, contextlib, io\nfrom bridge import cli\n"
            "for argv in (['--version'], ['--help'], ['serve', '--help'], ['render', '--help']):\n"
            "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "        cli.main(argv)\n"
            "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_help_and_version_are_quick() -> None:
    # Under 1 s; on a machine so loaded that Python itself starts slowly, within 3x a bare interpreter's start.
    bare = min(_elapsed(sys.executable, "-c", "pass") for _ in range(3))
    budget = max(1.0, 3 * bare)
    for args in (["--version"], ["--help"], ["serve", "--help"]):
        took = min(_elapsed(sys.executable, "-m", "bridge.cli", *args) for _ in range(2))
        assert took < budget, (args, took, bare)


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_has_a_description_and_every_option_help_with_its_default() -> None:
    for name, sub in _subparsers().items():
        assert sub.description and len(sub.description) > 40, name
        text = sub.format_help()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
            shows_default = action.default not in (None, False, []) and not action.required
            if shows_default:
                assert f"(default: {action.default})" in " ".join(text.split()), (name, action.dest)
            elif action.option_strings and not action.required and action.default is None and action.type is not None:
                # No fixed default: the help says what happens instead.
                assert "default" in action.help or action.dest in ("duration",), (name, action.dest)


def test_the_names_spelled_out_for_help_match_the_code() -> None:
    from bridge.cli.validators import METHOD_NAMES, SITE_NAMES
    from steering_core.extract.extraction import METHODS
    from steering_core.steer.sites import SITES

    assert tuple(SITES) == SITE_NAMES
    assert tuple(METHODS) == METHOD_NAMES


@pytest.fixture
def busy_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


#: (arguments, a phrase the one line must contain). All fail before any model loads.
FAST_MISTAKES = [
    (["extract", "--concept", "tempo", "--layers", "abc", "--out", "x.safetensors"], "wants e.g."),
    (["extract", "--concept", "tempo", "--layers", "3-1", "--out", "x.safetensors"], "is empty"),
    (["extract", "--concept", "nope", "--out", "x.safetensors"], "unknown concept"),
    (["extract", "--concept", "tempo", "--frames", "0", "--out", "x.safetensors"], "must be 1 or more"),
    (["extract", "--data", "no/such/folder", "--out", "x.safetensors"], "no such folder"),
    (["extract", "--concept", "tempo", "--out", "/dev/null/x.safetensors"], "is a file, not a folder"),
    (["demo", "--seconds", "-1"], "must be more than 0"),
    (["demo", "--seeds", "1"], "--seeds must be at least 2"),
    (["render", "--seconds", "0", "--out", "x.wav"], "must be more than 0"),
    (["render", "--seconds", "nan", "--out", "x.wav"], "not a finite number"),
    (["render", "--vectors", "missing.safetensors", "--out", "x.wav"], "no such file"),
    (["render", "--automation", "missing.jsonl", "--out", "x.wav"], "no such file"),
    (["render", "--model", "tiyn", "--out", "x.wav"], "did you mean 'tiny'"),
    (["render", "--model", "./no-such-folder", "--out", "x.wav"], "no model folder"),
    (["render", "--top-p", "2", "--out", "x.wav"], "0..1"),
    (["serve", "--chain", "nope"], "no chain preset 'nope'"),
    (["serve", "--midi-map", "nope"], "no controller map 'nope'"),
    (["serve", "--osc-port", "0"], "1..65535"),
    (["serve", "--buffer-ms", "-5"], "must be more than 0"),
    (["serve", "--vectors", "missing/"], "no such file"),
    (["serve", "--midi-api", "winmm"], "invalid choice"),
    (["serve", "--stem-channels", "3"], "whole pairs"),
    (["serve", "--stem-channels", "8"], "--stem-channels needs stems"),
    (["analyze", "--concept", "tempo", "--seeds", "0", "--out", "r"], "must be 1 or more"),
    (["analyze", "--out", "r"], "--concept"),
    (["bench", "--repeats", "0"], "must be 1 or more"),
    (["bench", "--model", "musicgen-smal"], "did you mean 'musicgen-small'"),
    ([], "required"),
]


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory) -> str:
    """A PYTHONPATH entry whose ``torch`` raises on import: a check that runs before the
    model loads must not need it (torch and transformers cost seconds to import)."""
    folder = tmp_path_factory.mktemp("no-torch")
    (folder / "torch").mkdir()
    (folder / "torch" / "__init__.py").write_text("raise ImportError('torch imported before the arguments were checked')\n")
    return str(folder)


@pytest.mark.parametrize("args, phrase", FAST_MISTAKES, ids=[" ".join(a) or "(nothing)" for a, _ in FAST_MISTAKES])
def test_a_mistake_is_one_line_before_anything_loads(args: list[str], phrase: str, tmp_path: Path, no_torch: str) -> None:
    run = steerbridge(*args, cwd=tmp_path, env={"PYTHONPATH": f"{no_torch}{os.pathsep}{REPO}"})
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert phrase.lower() in lines[0].lower(), lines[0]
    assert lines[0].startswith("steerbridge")
    assert not any(tmp_path.iterdir()), "a failed command left files behind"


def test_a_busy_osc_port_is_one_line_before_the_model_loads(busy_port: int, tmp_path: Path) -> None:
    run = steerbridge("serve", "--osc-port", str(busy_port), "--audio-out", "none", cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]
    assert f"127.0.0.1:{busy_port}" in run.stderr and "--osc-port" in run.stderr


def test_offline_hub_id_not_cached_is_one_line_within_3_s(tmp_path: Path) -> None:
    start = time.perf_counter()
    run = steerbridge("render", "--model", "facebook/musicgen-small", "--out", "x.wav", cwd=tmp_path,
                      env={"HF_HOME": str(tmp_path / "hf")})
    took = time.perf_counter() - start
    assert run.returncode == 2 and "Traceback" not in run.stderr
    line, = run.stderr.strip().splitlines()
    assert "hf download facebook/musicgen-small" in line and "local folder" in line
    assert "huggingface-cli" not in line
    assert took < 3.0


def test_offline_without_the_env_variable_fails_fast_too(tmp_path: Path) -> None:
    # No HF_HUB_OFFLINE: the hub probe finds no route (tests run offline) within its timeout.
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(PYTHONPATH=str(REPO), HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9")
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "bridge.cli", "render", "--model", "facebook/musicgen-small", "--out",
                          "x.wav"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert time.perf_counter() - start < 3.0


def test_layers_the_model_does_not_have_name_its_layer_count(tmp_path: Path) -> None:
    run = steerbridge("extract", "--concept", "tempo", "--layers", "0,99", "--frames", "2", "--out", "x.safetensors",
                      cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert "99" in last and "layers, 0.." in last, last
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.slow
def test_a_probe_that_finds_no_direction_names_the_layer_and_a_fix(tmp_path: Path) -> None:
    run = steerbridge("extract", "--model", "tiny", "--concept", "tempo", "--method", "probe_logistic", "--site",
                      "cross_attn_out", "--frames", "1", "--out", "x.safetensors", cwd=tmp_path)
    if run.returncode == 0:
        pytest.skip("this torch build found a direction at cross_attn_out; nothing to report")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert "layer" in last and "--method diffmean" in last, last


def test_bench_flags_repeats_that_disagree() -> None:
    from bridge.tools.bench import repeat_warnings, spread

    assert spread([1.0, 1.0, 1.0]) == 0.0
    assert spread([1.0, 1.1]) == pytest.approx(0.1)
    assert repeat_warnings({"engine": 0.05, "hf": 0.19}) == []
    (line,) = repeat_warnings({"engine": 0.05, "hf": 0.5})
    assert "hf 50%" in line and "engine" not in line.split("(")[1].split(")")[0]


def test_devices_without_midi_is_one_summary_with_a_fix_and_no_library_noise(tmp_path: Path) -> None:
    run = steerbridge("devices", "--midi-api", "alsa", cwd=tmp_path)
    assert run.returncode == 0 and "Traceback" not in run.stderr
    audio, midi = run.stdout.split("MIDI inputs")
    assert len(audio.strip().splitlines()) >= 2  # the heading and at least "(none)"
    if "unavailable" not in midi:
        pytest.skip("this machine has an ALSA sequencer: nothing to summarise")
    assert "Fix:" in midi and "--midi-in none" in midi
    assert "ALSA lib" not in run.stderr and "JackShm" not in run.stderr


# --- one error base class: bad input is one line, a bug is a traceback -------------------
#: Exceptions the project raises for its own faults (a broken invariant, a failed child
#: process): these must keep their tracebacks, so they must not be UserErrors.
BUG_CLASSES: frozenset[str] = frozenset()  # none so far


def _project_exception_classes() -> dict[str, type[BaseException]]:
    import importlib
    import inspect
    import pkgutil

    found: dict[str, type[BaseException]] = {}
    for package in ("bridge", "steering_core"):
        for info in pkgutil.walk_packages([str(REPO / package)], prefix=f"{package}."):
            module = importlib.import_module(info.name)
            for name, obj in vars(module).items():
                if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                    found[f"{module.__name__}.{name}"] = obj
    return found


def test_every_error_class_for_bad_input_derives_from_user_error() -> None:
    from steering_core.errors import UserError

    classes = _project_exception_classes()
    assert len(classes) >= 15, sorted(classes)  # the walk found the modules
    stray = [name for name, cls in classes.items()
             if not issubclass(cls, UserError) and name.rsplit(".", 1)[1] not in BUG_CLASSES]
    assert not stray, f"error classes outside UserError: {stray}"


def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from steering_core.errors import UnknownConceptError

    def raises(exc: BaseException):
        def command(args: argparse.Namespace) -> int:
            raise exc
        return command

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    args = parser.parse_args(["devices"])
    for exc in (UnknownConceptError("unknown concept 'x' (loaded: tempo)"), FileNotFoundError("no such file: a.wav")):
        monkeypatch.setattr(parser, "parse_args", lambda argv=None, e=exc: argparse.Namespace(**{
            **vars(args), "func": raises(e)}))
        assert cli.main([]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert "unknown concept 'x'" in err or "no such file" in err  # no KeyError quoting around it
        assert not err.split("error: ", 1)[1].startswith('"')
    for bug in (ValueError("an internal invariant broke"), KeyError("slot"), RuntimeError("hooks twice")):
        monkeypatch.setattr(parser, "parse_args", lambda argv=None, e=bug: argparse.Namespace(**{
            **vars(args), "func": raises(e)}))
        with pytest.raises(type(bug)):
            cli.main([])


def test_bad_input_deep_in_the_library_raises_user_errors() -> None:
    """Library validation raises UserErrors, so the CLI and the live server report them
    as one line; before, these were bare ValueError/KeyError, indistinguishable from bugs."""
    from steering_core.errors import UnknownConceptError, UserError
    from steering_core.steer.operators import get_operator
    from steering_core.stream.sampling import SamplingSettings
    from steering_core.stream.timeline import Change

    with pytest.raises(UserError, match="unknown operator"):
        get_operator("nope")
    with pytest.raises(UserError, match="top_p"):
        SamplingSettings(top_p=3.0).validate()
    with pytest.raises(UserError, match="change kind"):
        Change.from_json({"kind": "explode"})
    assert issubclass(UnknownConceptError, KeyError)
