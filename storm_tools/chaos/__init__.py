"""STORM's Chaos Toolkit extension and the `storm chaos` runner (chaos-experiments/README.md).

* :mod:`.actions` and :mod:`.probes`: what the experiment files call (``"module": "storm_tools.chaos.actions"``);
* :mod:`.driver`: the traffic driver (SDK clients in channels of 10, every publish and delivery recorded);
* :mod:`.judge`: the verdict (lost, duplicates, inversions, stored once, latencies, time to recover), pure;
* :mod:`.slo_seam`: the one place the SLO targets come from;
* :mod:`.context`: the topology under test (``storm cluster``'s state file, the Toxiproxy links);
* :mod:`.toxiproxy`: a small client of Toxiproxy's HTTP API; :mod:`.spike`: the connect spike;
* :mod:`.runner`: ``storm chaos run`` / ``make chaos``.
"""
