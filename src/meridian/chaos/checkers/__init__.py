"""Checkers: pure functions from a history to a :class:`Verdict`.

Each checker is a :class:`Checker`: a name (the invariant) and
``check(history) -> Verdict``. Checkers do no I/O except
:class:`~meridian.chaos.checkers.linearizable.LinearizableChecker`, which runs
the Porcupine Go command on the history file.

A verdict is ``valid`` True (the invariant held on this history), False (a
violation, with examples in ``errors``) or None (unknown: the checker could
not decide, e.g. Porcupine timed out, or there was nothing to check). A
checker that saw no relevant operation says unknown, never valid: a checker
that cannot fail is worse than none.
"""

from __future__ import annotations

from meridian.chaos.checkers.verdict import Checker, Verdict

__all__ = ["Checker", "Verdict"]
