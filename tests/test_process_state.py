"""Library code leaves the process as it found it: importing ``steering_core`` and
``bridge`` modules and calling the functions that need a seed, a thread count or a plot
changes neither torch's thread count, nor its global RNG, nor matplotlib's backend.

Run in a fresh interpreter: in this one the modules are long imported, so an import-time
change (``matplotlib.use`` at the top of a module) would have happened before any check."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys
import torch

torch.set_num_threads(3)  # a count no library function would pick itself
torch.manual_seed(42)
import matplotlib

def state():
    return {"threads": torch.get_num_threads(), "rng": torch.random.get_rng_state().tolist(),
            "backend": matplotlib.rcParams._get_backend_or_none(), "pyplot": "matplotlib.pyplot" in sys.modules}

before = state()
changed = {}

import time
t0 = time.perf_counter()

def check(what):
    print(f"{what}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    now = state()
    diff = [k for k in now if now[k] != before[k]]
    if diff:
        changed[what] = {k: now[k] for k in diff if k != "rng"} | ({"rng": "changed"} if "rng" in diff else {})
        before.update(now)  # report each change once, where it happened

from bridge.tools import plots
check("import bridge.tools.plots")
from steering_core.evaluate import clap  # noqa: F401 - imported for their import-time effects
from steering_core.toy import known_effect as knowneffect
from steering_core.model import tiny
from steering_core.toy import model as toy
from steering_core.toy import training as toytrain
from steering_core.model.loading import load_model
check("import steering_core")

import numpy as np
out = sys.argv[1]
plots.metric_curve([0, 1], [1.0, 2.0], "alpha", "metric", out + "/curve.png", title="t")
plots.spectrogram_grid([("a", np.sin(np.arange(4096) / 7)), ("b", np.cos(np.arange(4096) / 3))], 16000, out + "/grid.png")
check("bridge.tools.plots")
tiny.build_tiny_model()
check("tiny.build_tiny_model")
toy.build_untrained_toy()
check("toy.build_untrained_toy")
clap.tiny_clap()
check("clap.tiny_clap")
handle = load_model("tiny", device="cpu")
check("load_model")
knowneffect.known_effect_check(handle, seeds=2, points=2, seconds=0.2, frames=2, concepts=("tempo",))
check("knowneffect.known_effect_check")
from dataclasses import replace
from pathlib import Path
small = replace(toytrain.TrainSettings(), codec_steps=2, codec_batch=1, codec_frames=8, lm_steps=2, lm_batch=1,
                lm_frames=12, lm_short_batch=1, lm_short_frames=12, lm_tempo_steps=1, lm_tempo_batch=1,
                lm_tempo_frames=12, checkpoint_every=2)
toytrain.train_toy(Path(out) / "toy", Path(out) / "work", small, progress=False, parallel=False)
check("toytrain.train_toy")
print(json.dumps(changed))
"""


def test_library_calls_leave_threads_rng_and_backend_alone(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # matplotlib's own default
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    changed = json.loads(done.stdout.strip().splitlines()[-1])
    assert changed == {}, changed
    assert (tmp_path / "curve.png").stat().st_size > 0 and (tmp_path / "grid.png").stat().st_size > 0
