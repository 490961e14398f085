"""Watchpost's development lab: network namespaces, lab servers, the lab hub and the demo."""
