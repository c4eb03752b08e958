"""steerbridge's live side and command line: control, OSC, MIDI, audio path, CLI.

Depends on ``steering_core``; ``steering_core`` never imports from here.
"""

__version__ = "0.1.0"
