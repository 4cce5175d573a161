"""Subcommand registrars for `vigil`: each owner module exposes ``register(subparsers)``."""

from __future__ import annotations

from vigil.registry.cli import register_promote
from vigil.scheduling.cli import register as register_scheduling
from vigil.serving.cli import register as register_serving
from vigil.sweep.cli import register as register_sweep

REGISTRARS: list = [register_sweep, register_promote, register_serving, register_scheduling]
