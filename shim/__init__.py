"""cutover-shim: route each endpoint to the Rust or Go backend by a runtime flag."""

__version__ = "0.1.0"
