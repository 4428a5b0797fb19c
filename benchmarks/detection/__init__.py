"""Detection benchmark: how fast gates catch bad versions and how rarely they stop good ones.

A seeded simulation of an endpoint at 15 requests/s whose stable fails 0.5 % of requests, with
a candidate rolled out 10 % -> 50 % -> 100 % in 5-minute bakes. Every policy sees the same
requests (common random numbers): saferollout's sequential error gate, evaluated after every
request and once a minute, three reference policies in the style of well-known canary tools,
and Wald's sequential probability ratio test as the reference for exposure.

    python -m benchmarks.detection              # 2,000 runs per case, writes benchmarks/results/
    python -m benchmarks.detection --runs 200   # a quick look

See docs/gates.md for what the table says.
"""
