"""``python -m isacir.cli`` (what ``torchrun -m isacir.cli train`` runs)."""

from . import main

main()
