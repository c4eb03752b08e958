"""The live server: everything that runs while the music plays (see docs/DESIGN.md)."""
