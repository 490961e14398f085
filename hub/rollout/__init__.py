"""Staged firmware rollouts: the hub side of updates (`watchpost-hub push-update`, `rollout`).

``plan`` (targets, canaries, waves, the failure threshold), ``state`` (the rollout, its waves and
each device's job in the hub store: migration 2 of hub/store/schema.py), ``release`` (the signed
artifact checked before it is sent), ``push`` (the artifact to one device over the operator's
chunked bundle transfer, hub/operator/commands.py), ``driver`` (canaries first, then waves; a
wave whose failures pass the threshold pauses the rollout), ``command`` (the CLI).
"""
