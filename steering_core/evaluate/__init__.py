"""Measuring: probes and clustering, per-layer influence, audio metrics, CLAP scores, measured steering effects."""
