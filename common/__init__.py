"""Vigil's shared vocabulary: settings, errors, wire formats, stream names, broker connection, bundles.

Imports nothing from ``producers``, ``workers`` or ``model`` at import time.
"""
