"""What the device and the hub share: topic layout, signed envelopes, bundles, job states."""
