"""Pure wire-shape translation between the Rust and Go dialects.

Dicts and ndarrays in, new dicts out: no I/O, no globals that change, and nothing from `shim`.
"""
