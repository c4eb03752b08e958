"""The built-in toy model: its synthetic world, its training, its known-effect checks and its shipped weights."""
