"""Prefect flows (installed as ``ropelab.flows``): compose stages, nothing else; ``cli`` is the ``ropelab``
command."""
