"""Reference backends: small, deterministic stand-ins for the Rust and Go gateways.

They speak the contract's wire shapes exactly, so operators can rehearse a cutover and the
tests can run the shim against real servers. `shim reference rust|go` serves one, at the
paths the route table gives each endpoint. A stand-in, not part of the product: they may
import the shim (the route table), the shim never imports them (tests/test_architecture.py).
"""
