"""② assemble: decide when a study is complete and which series the model reads."""
