"""The README works as written: its shell blocks, pasted in order into a fresh folder
that stands for the repository root, on the default built-in model.

Commands that need the network (installs, hub ids), a GPU (``--device cuda``), MIDI
hardware, or run until Ctrl-C are skipped, each with its reason in the test's output;
``.ci/run`` runs the install commands themselves.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
#: What the README's commands may leave in the repository root: all git-ignored.
ALLOWED_IN_ROOT = {".venv", "out", "demo_out"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class Command:
    text: str
    skip: str | None = None  # the reason it is not run here


def shell_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.S | re.M)


def commands(block: str) -> list[str]:
    """Lines joined across backslash continuations and here-documents; comments dropped."""
    out: list[str] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        heredoc = re.search(r"<<-?'?(\w+)'?", line)
        if heredoc:
            body = []
            while i < len(lines) and lines[i].strip() != heredoc.group(1):
                body.append(lines[i])
                i += 1
            line = "\n".join([line, *body, heredoc.group(1)])
            i += 1
        out.append(line)
    return out


def _words(text: str) -> list[str]:
    try:
        return shlex.split(text.split("\n")[0], comments=True)
    except ValueError:
        return text.split()


def classify(text: str) -> Command:
    """Which README commands this test runs, and why it leaves the others out."""
    words = _words(text)
    for flag, value in itertools.pairwise(words):
        if flag in ("--model", "--clap") and HUB_ID.match(value) and not value.startswith("out/"):
            return Command(text, f"names the hub id {value} (needs the network or its download)")
        if flag == "--device" and value.startswith("cuda"):
            return Command(text, "needs a CUDA GPU")
        if flag == "--midi-in" and value not in ("none", "virtual"):
            return Command(text, f"needs the MIDI controller {value}")
    # Install, lint, type-check and test-suite steps: network (pip) and the suite itself, run by .ci/run.
    parts = [p.strip() for p in text.split(" && ")]
    kept = [p for p in parts if not re.search(r"pip install|install-system-deps|-m venv|pytest|ruff check|bin/mypy", p)]
    if not kept:
        return Command(text, "installs or runs the test suite (.ci/run does this)")
    text = " && ".join(kept)
    if "gpu_figures.py" in text and "--smoke" not in text:
        return Command(text, "the GPU figures need a CUDA GPU (--smoke is the CPU run)")
    if re.search(r"\bsteerbridge serve\b", text) and "--duration" not in text:
        return Command(text, "serve without --duration runs until Ctrl-C")
    return Command(text)


def readme_commands() -> list[Command]:
    return [classify(c) for block in shell_blocks(README.read_text()) for c in commands(block)]


def test_the_parser_finds_the_quickstart_and_skips_for_a_reason() -> None:
    found = readme_commands()
    run = [c.text for c in found if c.skip is None]
    assert any(c.endswith("steerbridge demo") for c in run)  # quickstart 1, its install steps left to .ci/run
    assert any(c.startswith("steerbridge extract") for c in run)
    assert any(".venv/bin/python - <<'PY'" in c for c in run)
    assert all(c.skip for c in found if "facebook/" in c.text or "--device cuda" in c.text)


def _fake_venv(root: Path) -> None:
    """``.venv/bin`` in the scratch root: this interpreter and this checkout, as quickstart 1 would install."""
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    env = f'export PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}\n'
    scripts = {
        "python": f'#!/bin/sh\n{env}exec {shlex.quote(sys.executable)} "$@"\n',
        "steerbridge": f'#!/bin/sh\n{env}exec {shlex.quote(sys.executable)} -m bridge.cli "$@"\n',
        "activate": f'export PATH={shlex.quote(str(bin_dir))}:"$PATH"\n',
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (bin_dir / "python3").symlink_to(bin_dir / "python")


@pytest.mark.slow
def test_readme_commands_work_as_written(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    _fake_venv(root)
    (root / "benchmarks").symlink_to(REPO / "benchmarks")  # commands that run the repository's scripts
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env.pop("VIRTUAL_ENV", None)
    activated = False  # once the README sources .venv/bin/activate, later commands run in that shell state
    for command in readme_commands():
        first = command.text.splitlines()[0]
        if command.skip:
            print(f"skipped ({command.skip}): {first}")
            continue
        start = time.monotonic()
        prefix = ". .venv/bin/activate\n" if activated else ""
        run = subprocess.run(["bash", "-c", f"set -euo pipefail\n{prefix}{command.text}"], cwd=root, env=env,
                             capture_output=True, text=True, timeout=1200)
        print(f"ran in {time.monotonic() - start:.0f} s: {first}", flush=True)
        assert run.returncode == 0, f"README command failed: {command.text}\n{run.stderr[-3000:]}"
        assert "Traceback" not in run.stderr, run.stderr[-3000:]
        activated = activated or re.match(r"^(\.|source) \.venv/bin/activate", command.text) is not None
    left = {p.name for p in root.iterdir()} - {"benchmarks"}  # the repository's own folder, linked in
    assert left <= ALLOWED_IN_ROOT, f"README commands left files in the repository root: {sorted(left - ALLOWED_IN_ROOT)}"
    ignored = (REPO / ".gitignore").read_text().split()
    assert all(f"/{name}/" in ignored or f"{name}/" in ignored for name in left), "outputs must be git-ignored"
    assert (root / "out" / "tempo.safetensors").is_file() and (root / "demo_out" / "demo.json").is_file()


def test_ci_runs_exactly_the_readmes_test_command() -> None:
    """.ci/run's command is the README's quickstart command 2, character for character."""
    quickstart = shell_blocks(README.read_text())[0]
    readme_test = [c for c in commands(quickstart) if "install-system-deps" in c]
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if "install-system-deps" in line]
    assert len(readme_test) == 1 and ci_lines == readme_test
