"""Serving: the request path (`proxy` and `forward`, their bodies, JSON safety, disconnect,
caller and access log), the backends' client (`upstream`, `admission`, `backend_url`),
shadow traffic (`shadow`) and the process model (`process`, `protocol`, `supervisor`: the
only modules that import uvicorn). Imports the cutover, parity and the vocabulary."""
