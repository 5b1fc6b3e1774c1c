"""The benchmark: `shim bench` and the one-off measurements beside it; never shipped in the wheel.

`shim bench` loads this package from the checkout (see `shim.cli.main.run_bench`): it needs the
servers and scripts of this folder, which an installed wheel does not have. Its modules, one
job each, top to bottom:

- `runner`: the command itself (`run`) and the run of every scenario, round by round (`bench`);
- `scenarios`: what each scenario starts and the targets it loads (`Bench`);
- `measure`: one target measured: warm-up, load, CPU and memory of its processes (`Result`);
- `load`: the timed load generators (wrk, else a built-in aiohttp one) and the one
  percentile helper;
- `bursts`: N requests at once on N raw connections (`burst`, also used by tests);
- `processes`: the processes of a run (`Stack`, nginx's config), their CPU and memory;
- `report`: medians over rounds, the ratios the targets are judged by, the table, the plot.

The other modules are the comparison servers `shim bench` starts (`stub_backend`,
`floor_proxy`, `starlette_httpx_proxy`, `slow_backend`, served by uvicorn from this folder)
and one-off measurement scripts (`python -m benchmarks.NAME` from the checkout's root).
"""
