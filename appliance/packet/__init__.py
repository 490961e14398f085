"""The packet model shared by inline, detect and alerts: decoded packets, flows, address sets."""
