"""The operator's surface: pure views (`views`, `ui_view`) and what renders them (the admin
API in `admin`, the page in `ui`, `ui_read`, `sessions`, `templates/`, `static/`), and the
on-demand parity probe (`probe`). Above serving; only the CLI and `shim.app` import it."""
