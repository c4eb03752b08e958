"""Loading MusicGen: a hub id, a local folder, a built-in model or a real configuration with random weights."""
