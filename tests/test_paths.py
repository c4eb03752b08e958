"""Every folder outside the working directory is worked out in ``steering_core/paths.py``,
and the XDG base-directory variables are honoured there."""

from __future__ import annotations

import re
from pathlib import Path

from steering_core import paths

REPO = Path(__file__).resolve().parent.parent


def test_the_xdg_variables_are_honoured(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert paths.cache_dir() == tmp_path / "cache" / "steerbridge"
    assert paths.cache_dir("vectors") == tmp_path / "cache" / "steerbridge" / "vectors"
    assert paths.data_dir("scenes") == tmp_path / "data" / "steerbridge" / "scenes"


def test_without_them_the_home_folder_is_used(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert paths.cache_dir("activations") == tmp_path / ".cache" / "steerbridge" / "activations"
    assert paths.data_dir("mappings") == tmp_path / ".local" / "share" / "steerbridge" / "mappings"


def test_the_live_server_and_the_tools_use_these_folders(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    from bridge.live.midimaps import user_maps_dir
    from bridge.live.scenes import default_scene_dir

    assert default_scene_dir() == tmp_path / "data" / "steerbridge" / "scenes"
    assert user_maps_dir() == tmp_path / "data" / "steerbridge" / "mappings"


def test_no_other_module_works_out_a_home_folder() -> None:
    # (``expanduser`` on a path the user typed, such as ``--model ~/weights``, is another thing.)
    pattern = re.compile(r"XDG_(CACHE|DATA)_HOME|Path\.home\(\)")
    offenders = sorted(str(p.relative_to(REPO)) for package in ("steering_core", "bridge")
                       for p in (REPO / package).rglob("*.py")
                       if p.name != "paths.py" and pattern.search(p.read_text()))
    assert offenders == []
