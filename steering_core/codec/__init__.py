"""Turning codes into audio: EnCodec decoded in streaming chunks, its decoder walked with int padding."""
