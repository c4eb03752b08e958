"""Defaults come from one source: serve's command line, ``ServeOptions`` and
``EngineSettings`` agree, and render falls back on what serve starts with."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, Field, fields

from bridge.cli import build_parser
from bridge.live.options import DEFAULT_PROMPT, EngineSettings, ServeOptions

#: Serve options whose parsed value is not a field of the same name.
NOT_A_FIELD = {"quiet", "verbose_after_command"}  # ServeOptions.status_line, inverted; -v after the command


def _sub(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub: argparse.ArgumentParser = action.choices[name]
    return sub


def _default(f: Field) -> object:
    return f.default_factory() if f.default is MISSING and f.default_factory is not MISSING else f.default


def _options(name: str) -> dict[str, argparse.Action]:
    return {a.dest: a for a in _sub(name)._actions if a.option_strings and not isinstance(a, argparse._HelpAction)}


def test_every_serve_option_has_its_dataclass_field_default() -> None:
    serve = {f.name: _default(f) for f in fields(ServeOptions)}
    engine = {f.name: _default(f) for f in fields(EngineSettings)}
    assert not set(serve) & set(engine)  # a dest names exactly one field
    options = _options("serve")
    for dest, action in options.items():
        if dest in NOT_A_FIELD:
            continue
        assert dest in serve or dest in engine, f"serve {action.option_strings[0]} sets no ServeOptions/EngineSettings field"
        assert action.default == (serve[dest] if dest in serve else engine[dest]), (dest, action.default)
    assert options["quiet"].default is False and serve["status_line"] is True
    # The two names the command line spells its own way still reach EngineSettings.
    assert options["ring_ms"].option_strings == ["--buffer-ms"]
    assert options["lookahead_frames"].option_strings == ["--lookahead"]


def test_the_parsed_command_line_builds_the_dataclasses_unchanged() -> None:
    """``serve`` with no options gives ServeOptions() itself."""
    from bridge.cli.serve import _fields_from

    args = build_parser().parse_args(["serve"])
    built = ServeOptions(**{**_fields_from(ServeOptions, args), "engine": EngineSettings(
        **_fields_from(EngineSettings, args)), "status_line": not args.quiet})
    assert built == ServeOptions()
    args = build_parser().parse_args(["serve", "--buffer-ms", "80", "--lookahead", "3", "--top-k", "7", "--quiet"])
    assert EngineSettings(**_fields_from(EngineSettings, args)) == EngineSettings(ring_ms=80.0, lookahead_frames=3)
    assert _fields_from(ServeOptions, args)["top_k"] == 7 and args.quiet


def test_render_and_serve_share_the_default_prompt_model_and_sampling() -> None:
    from bridge.cli import render
    from steering_core.stream.sampling import SamplingSettings

    serve, rendered = _options("serve"), _options("render")
    assert serve["prompt"].default == ServeOptions.prompt == DEFAULT_PROMPT
    assert rendered["prompt"].default is None and repr(DEFAULT_PROMPT) in (rendered["prompt"].help or "")
    assert serve["model"].default == ServeOptions.model and ServeOptions.model in (rendered["model"].help or "")
    sampling = SamplingSettings()
    assert (sampling.guidance_scale, sampling.temperature, sampling.top_k) == (
        ServeOptions.guidance, ServeOptions.temperature, ServeOptions.top_k)
    args = build_parser().parse_args(["render", "--out", "x.wav"])
    assert render._settings(args, {}) == sampling
    assert ServeOptions.smoothing_ms == render.DEFAULT_SMOOTHING_MS
