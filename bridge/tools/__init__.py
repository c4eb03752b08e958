"""Offline tools: analysis, benchmarks, the demo, replay and the toy model commands."""
