"""The regional hub's software: operator commands, provisioning, collector, store, console.

Never installed on a Pi: the firmware package (`appliance`) does not import it.
"""
