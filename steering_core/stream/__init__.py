"""Generating: the decode loop and its static step, sampling, the timeline with rollback, offline render."""
