"""The isacir lab: what measures the product where real weights and data cannot be had.

- :mod:`.shapes`: the Shapes-CIR world, its tiny foundation, every Shapes bench and the pilot
  simulator;
- :mod:`.demo`: the whole system on Shapes-CIR, then the operator UI (``make demo``);
- :mod:`.results`: the docs' result tables, generated from the typed run records;
- :mod:`.cli`: the ``isacir-lab`` command line.

The lab imports the product as any user would (as ``open_clip_train`` imports ``open_clip``); the
product never imports the lab, which ``make lint`` checks.
"""
