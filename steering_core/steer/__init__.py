"""Steering itself: hook sites, injection operators, the steerer and its knob table, vectors and their file format."""
