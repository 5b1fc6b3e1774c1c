"""Reference backends: small, deterministic stand-ins for the Rust and Go gateways.

They speak the contract's wire shapes exactly, so operators can rehearse a cutover and the
tests can run the shim against real servers. `shim reference rust|go` serves one.
"""
