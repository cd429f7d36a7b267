"""`storm day`: the launch day replayed on the real services (docs/storm-day.md).

runner.py drives a run (profile.py, population.py, provision.py, fleet.py + load.py, live.py) and writes the
run folder; report.py, plots.py and postmortem.py turn that folder into the report.
"""
