"""Chunked codec decode against one-shot decode of the same tokens, on a model's own codec.

Prints one JSON object per decoder setting: the SNR (dB) of the streamed audio against
a one-shot decode, away from the clip's edges, and the worst SNR over 0.5 s blocks.
Tokens are uniform random codes (the codec, not the language model, is under test).

    python benchmarks/chunked_snr.py --model musicgen-small --seconds 12
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from steering_core.codec.streaming import ChunkedDecoder, decode
from steering_core.model.loading import load_model

#: (context, holdback, crossfade) frames
SETTINGS = ((16, 4, 2), (50, 4, 2), (8, 6, 3), (16, 6, 3), (8, 8, 4), (16, 8, 4), (50, 8, 4), (50, 12, 6))


def snr_db(ref: np.ndarray, out: np.ndarray) -> float:
    err = np.sum((ref - out) ** 2)
    return float(10 * np.log10(np.sum(ref ** 2) / max(err, 1e-30)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="musicgen-small")
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--chunk", type=int, default=1, help="frames pushed per pull (the engine uses 1)")
    p.add_argument("--settings", default=None, help="context/holdback/crossfade triples, e.g. 16/6/3,50/6/3")
    args = p.parse_args()
    settings = SETTINGS if not args.settings else tuple(
        tuple(int(x) for x in triple.split("/")) for triple in args.settings.split(","))
    handle = load_model(args.model, "cpu", "float32")
    frames = round(args.seconds * handle.frame_rate)
    g = torch.Generator().manual_seed(0)
    vocab = handle.decoder_config.vocab_size
    codes = torch.randint(0, vocab, (1, handle.num_codebooks, frames), generator=g)
    ref = decode(handle, codes)[0, 0]
    edge = 50 * handle.hop_length
    for context, holdback, crossfade in settings:
        dec = ChunkedDecoder(handle, context_frames=context, holdback_frames=holdback, crossfade_frames=crossfade)
        parts = []
        for i in range(0, frames, args.chunk):
            dec.push(codes[:, :, i:i + args.chunk])
            parts.append(dec.pull()[0, 0])
        parts.append(dec.pull(final=True)[0, 0])
        out = np.concatenate(parts)
        r, o = ref[edge:-edge], out[edge:-edge]
        block = handle.sample_rate // 2
        worst = min(snr_db(r[i:i + block], o[i:i + block]) for i in range(0, len(r) - block, block))
        print(json.dumps({"model": args.model, "context": context, "holdback": holdback, "crossfade": crossfade,
                          "chunk": args.chunk, "snr_db": round(snr_db(r, o), 1), "worst_block_snr_db": round(worst, 1)}))


if __name__ == "__main__":
    main()
