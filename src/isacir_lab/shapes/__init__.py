"""Shapes-CIR: a synthetic composed-retrieval world, its tiny CLIP-style foundation and the runner.

- :mod:`.world` generates the world (unlabeled training images, caption pairs, CIRCO-layout test
  queries), deterministic by seed.
- :mod:`.foundation` trains the tiny open_clip foundation on the world's captions.
- :mod:`.bench` runs every method through the ordinary trainer and the official evaluation.
"""
