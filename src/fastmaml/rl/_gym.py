"""The lazy import of gymnasium (the ``rl`` extra)."""

from __future__ import annotations


def gymnasium():
    try:
        import gymnasium
    except ImportError:
        raise ImportError("fastmaml's meta-RL needs gymnasium: pip install 'fastmaml[rl]' "
                          "(in a checkout: pip install -e '.[rl]')") from None
    return gymnasium
