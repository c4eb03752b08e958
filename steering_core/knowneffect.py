"""The known-effect check: on ``toy``, whose concepts exist by construction, prompts and
steering must move what a listener hears, by the margins below.

* conditioning: fast captions give an onset rate ≥ 1.5× that of slow ones, bright
  captions a spectral centroid ≥ 1.5× that of dark ones (means over the seeds);
* steering (Facchiano et al., Panda et al.): the extracted tempo vector moves the onset
  rate, and the timbre vector the centroid, monotonically with alpha on a neutral prompt
  (Spearman ≥ 0.9 of the mean curve) with the ends further apart than the seed spread;
* alpha 0 is bit-identical to no vector at all.

``known_effect_check`` runs it all and says which held; ``steerbridge toy check`` prints
it, the test suite asserts it, and ``benchmarks/toy_effects.py`` records it.
"""

from __future__ import annotations

import numpy as np
import torch

from .concepts import load_concept
from .effects import CONCEPT_METRIC, conditioning, render_rows, steering_sweep
from .extraction import extract_vector
from .models import MusicGenHandle, load_model
from .steerer import Steerer

NEUTRAL_PROMPT = "an instrumental piece with drums and a lead synth"
#: The protocol on toy: the concept's vector on one middle layer, alphas within a span per
#: concept, measured (benchmarks/RESULTS.md): tempo over the preset's ±6; timbre over ±3.
#: The presets' default (±6 on three layers, which add up along the residual stream)
#: overdrives this 6-layer model, and past +3 the timbre vector still brightens the lead's
#: shade (read off its codes) while the spectral centroid turns down as pitch and mix shift.
ALPHA_SPANS = {"tempo": 6.0, "timbre": 3.0}
MIN_RATIO = 1.5
MIN_SPEARMAN = 0.9


def alpha_zero_is_identity(handle: MusicGenHandle, vector, prompt: str = NEUTRAL_PROMPT) -> bool:
    steerer = Steerer(handle)
    steerer.add(vector, alpha=0.0)
    plain = render_rows(handle, [prompt], 1.0, seed=3)[0]
    steered = render_rows(handle, [prompt], 1.0, seed=3, steerer=steerer)[0]
    return bool(np.array_equal(plain, steered))


def known_effect_check(handle: MusicGenHandle | None = None, *, seeds: int = 5, points: int = 7,
                       seconds: float = 4.0, method: str = "diffmean", frames: int = 50,
                       concepts: tuple[str, ...] = ("tempo", "timbre"),
                       layers: tuple[int, ...] | None = None) -> dict[str, object]:
    handle = handle or load_model("toy", device="cpu")
    layers = layers or (handle.num_layers // 2,)
    torch.manual_seed(0)
    report: dict[str, object] = {"model": handle.model_id, "method": method, "seeds": seeds, "seconds": seconds,
                                 "prompt": NEUTRAL_PROMPT, "concepts": {}}
    lines, passed = [], True
    for name in concepts:
        preset = load_concept(name)
        metric = CONCEPT_METRIC[name]
        pairs = preset.pairs()[:seeds]
        cond = conditioning(handle, [p for p, _ in pairs], [n for _, n in pairs], metric, seconds=seconds)
        vector = extract_vector(handle, preset, method=method, frames=frames, layers=layers, progress=False)
        span = ALPHA_SPANS.get(name, max(abs(a) for a in preset.alpha_range))
        sweep, _ = steering_sweep(handle, vector, NEUTRAL_PROMPT, list(np.linspace(-span, span, points)),
                                  metric=metric, seeds=seeds, seconds=seconds)
        identity = alpha_zero_is_identity(handle, vector)
        ok = {"conditioning": cond.ratio >= MIN_RATIO,
              "steering_monotonic": sweep.spearman >= MIN_SPEARMAN,
              "steering_ends_clear": sweep.end_gap > sweep.seed_spread,
              "alpha_zero_identity": identity}
        passed = passed and all(ok.values())
        report["concepts"][name] = {"conditioning": cond.to_json(), "sweep": sweep.to_json(),
                                    "layers": list(vector.layers), "checks": ok}
        lines.append(f"{name}: {preset.positive_label} captions {cond.ratio:.2f}x the {metric} of "
                     f"{preset.negative_label} ones (need >= {MIN_RATIO})")
        lines.append("  steered, " + sweep.summary())
        verdicts = ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in ok.items())
        lines.append(f"  checks: {verdicts}")
    report["passed"] = passed
    report["lines"] = lines
    return report
