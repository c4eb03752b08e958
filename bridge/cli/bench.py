"""``steerbridge bench``: the engine's speed beside transformers' generate(), same run."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .parsing import add_command, cuda_graphs_arg, model_args
from .validators import check_model, positive_float, positive_int

if TYPE_CHECKING:
    from .parsing import Commands


def register(sub: Commands) -> None:
    p = add_command(sub, "bench", "engine speed beside transformers' generate(), same run",
                    "Time the streaming engine beside transformers' own generate() on the same model, device, dtype, "
                    "guidance and length, in the same run; print one JSON object. Warns when the repeats disagree by "
                    "more than 20 % (a busy machine).")
    model_args(p)
    p.add_argument("--seconds", type=positive_float, default=10.0, help="audio seconds generated per timed run")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed runs per side; the fastest counts")
    p.add_argument("--streams", action="store_true",
                   help="also batch 1, 2, 4, ... steered streams until one batch no longer keeps real time")
    p.add_argument("--max-streams", type=positive_int, default=256, help="where --streams stops if real time never breaks")
    p.add_argument("--reprime", action="store_true",
                   help="also time one re-prime at half the trained window (generates that many frames first)")
    p.add_argument("--json", action="store_true", help="one JSON object on one line")
    cuda_graphs_arg(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    check_model(args.model)
    from ..tools.bench import run_bench

    result = run_bench(args.model, args.seconds, args.device, args.dtype, repeats=args.repeats,
                       max_streams=args.max_streams if args.streams else 0, reprime=args.reprime,
                       cuda_graphs=args.cuda_graphs)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0
