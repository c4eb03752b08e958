"""Finding concept directions: concept presets, extraction from prompt sets and from labelled audio."""
