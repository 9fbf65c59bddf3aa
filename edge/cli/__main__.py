"""``python -m edgeseg.cli``: the same as the ``edgeseg`` command."""

from .app import main

main()
