"""Safe firmware updates on the device: verify a signed release artifact, install it as a new
venv, switch `current` atomically, check the daemon's health, roll back on failure.

artifact.py (signature and hashes, before anything is unpacked), install.py (the venv),
layout.py (releases/, current, previous), health.py (the checks and their probes), job.py (the
persisted state machine and the boot check), cli.py (`watchpost update ...`). See docs/updates.md.
"""
