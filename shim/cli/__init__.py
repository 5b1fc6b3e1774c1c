"""The `shim` command: the parser (`main`), one module per family of commands, the demo
and the fleet demo. The top layer: nothing in the product imports it."""
