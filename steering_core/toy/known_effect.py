"""The known-effect check: on ``toy``, whose concepts exist by construction, prompts and
steering must move what a listener hears, by the margins below.

* conditioning: fast captions give an onset rate ≥ 1.5× that of slow ones, bright
  captions a spectral centroid ≥ 1.5× that of dark ones (means over the seeds);
* steering (Facchiano et al., Panda et al.): the extracted tempo vector moves the onset
  rate, and the timbre vector the centroid, monotonically with alpha on a neutral prompt
  (Spearman ≥ 0.9 of the mean curve) with the ends further apart than the seed spread;
* alpha 0 is bit-identical to no vector at all.

``data_direction_check`` asks the same of a direction from labelled audio (``extract
--data`` on ``toy world`` folders): cosine ≥ 0.5 with the prompt-set direction on the
same layer, and a sweep that moves the metric the same way.

``known_effect_check`` runs it all and says which held; ``steerbridge toy check`` prints
it, the test suite asserts it, and ``benchmarks/toy_effects.py`` records it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from steering_core.evaluate.steering_effects import CONCEPT_METRIC, conditioning, render_rows, steering_sweep
from steering_core.extract.concepts import load_concept
from steering_core.extract.extraction import extract_vector, vector_from_activations
from steering_core.extract.labelled_audio import collect_labelled
from steering_core.model.loading import MusicGenHandle, load_model
from steering_core.scoped import seeded
from steering_core.steer.steerer import Steerer

NEUTRAL_PROMPT = "an instrumental piece with drums and a lead synth"
#: The protocol on toy: the concept's vector on one middle layer, alphas within a span per
#: concept, measured (benchmarks/RESULTS.md): tempo over the preset's ±6; timbre over ±3.
#: The presets' default (±6 on three layers, which add up along the residual stream)
#: overdrives this 6-layer model, and past +3 the timbre vector still brightens the lead's
#: shade (read off its codes) while the spectral centroid turns down as pitch and mix shift.
ALPHA_SPANS = {"tempo": 6.0, "timbre": 3.0}
MIN_RATIO = 1.5
MIN_SPEARMAN = 0.9
MIN_DATA_COSINE = 0.5


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
    # Seeded for the whole check (as it always was), but on a forked RNG: the caller's
    # global RNG is the caller's.
    with seeded(0, handle.device):
        return _known_effect_check(handle, seeds=seeds, points=points, seconds=seconds, method=method,
                                   frames=frames, concepts=concepts, layers=layers)


def _known_effect_check(handle: MusicGenHandle, *, seeds: int, points: int, seconds: float, method: str,
                        frames: int, concepts: tuple[str, ...], layers: tuple[int, ...] | None) -> dict[str, object]:
    layers = layers or (handle.num_layers // 2,)
    report: dict[str, Any] = {"model": handle.model_id, "method": method, "seeds": seeds, "seconds": seconds,
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


def data_direction_check(handle: MusicGenHandle | None = None, concept: str = "timbre", *, per_class: int = 16,
                         seeds: int = 5, points: int = 7, seconds: float = 4.0, layer: int | None = None,
                         folder: str | Path | None = None) -> dict[str, object]:
    """The direction from labelled world audio against the prompt-set direction: their
    cosine on ``layer`` (the middle one by default), and a sweep of the audio direction.

    The audio is rendered into ``folder`` (a temporary one by default) as minimal pairs
    (``captions.write_labelled_folders``) and read like any ``--data`` folder."""
    from steering_core.toy import captions

    handle = handle or load_model("toy", device="cpu")
    layer = handle.num_layers // 2 if layer is None else layer
    preset = load_concept(concept)
    (pos_label, _), (neg_label, _) = captions.CLASSES[concept]
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(folder) if folder is not None else Path(scratch)
        captions.write_labelled_folders(root, concept, per_class=per_class)
        data = collect_labelled(handle, root, window_s=seconds, cache=Path(scratch) / "cache", progress=False)
    pos, neg = data.split(pos_label, neg_label)
    audio_vector = vector_from_activations(handle, concept, pos, neg, [layer],  # as extract --data builds it
                                           alpha_range=preset.alpha_range)
    prompt_vector = extract_vector(handle, preset, layers=(layer,), progress=False)
    cosine = float(audio_vector.directions[0] @ prompt_vector.directions[0])
    span = ALPHA_SPANS.get(concept, max(abs(a) for a in preset.alpha_range))
    sweep, _ = steering_sweep(handle, audio_vector, NEUTRAL_PROMPT, list(np.linspace(-span, span, points)),
                              metric=CONCEPT_METRIC[concept], seeds=seeds, seconds=seconds)
    ok = {"cosine": cosine >= MIN_DATA_COSINE, "steers_the_same_way": sweep.spearman >= MIN_SPEARMAN
          and sweep.end_gap > sweep.seed_spread}
    return {"concept": concept, "layer": layer, "clips_per_class": per_class, "cosine": round(cosine, 4),
            "sweep": sweep.to_json(), "checks": ok, "passed": all(ok.values()),
            "line": (f"{concept} from labelled audio: cosine {cosine:.2f} with the prompt-set direction "
                     f"(need >= {MIN_DATA_COSINE}); steered, {sweep.summary()}")}
