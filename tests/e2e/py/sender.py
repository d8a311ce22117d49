"""Logs 100 steps, whatever the server is doing; then finishes.

    sender.py MODE    MODE: `wait` (finish waits up to 60 s for the server),
                            `leave` (finish gives up after 1 s: the spool stays on disk),
                            `refused` (step 7 carries a time the server refuses)
"""

import math
import sys
import time
import warnings

import keel

mode = sys.argv[1]
run = keel.init(name=f"sender-{mode}", finish_timeout=1 if mode == "leave" else 60)
t0 = time.perf_counter()
for step in range(100):
    data = {"loss": math.nan if step == 7 else 1.0 / (step + 1), "grad_norm": [0.5, 0.25], "layers/0/hidden_var": 1.0, "layers/1/hidden_var": float(step)}
    if mode == "refused" and step == 7:
        data["time"] = -1.0
    run.log(data, step=step)
    time.sleep(0.01)
took = time.perf_counter() - t0
print(f"logged 100 steps in {took:.2f} s", flush=True)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    run.finish()
for w in caught:
    print(f"warning: {w.message}", flush=True)
