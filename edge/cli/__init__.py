"""The ``edgeseg`` command line: one verb a job (entry point ``edgeseg.cli:main``).

Each verb parses its options, makes one library call and formats the answer; the logic lives with its owner
(``edgeseg.segmenter``, ``edgeseg.evaluate``, ``edgeseg.device.*``, ``edgeseg.train.*``, ``edgeseg.export.*``), whose
heavy modules are imported inside the verb's body so that ``edgeseg --help`` and ``edgeseg run`` start fast and
work without torch. Nothing outside this package imports it.

    app.py        the group and the registration of the verbs
    common.py     one-line errors, the command line as typed, the shared option groups
    <verb>.py     the verbs, grouped by what they work on
"""

from .app import main

__all__ = ["main"]
