"""The crash-safe local record of a run: journal, resume state, the sink into it, the shipper out of it, liveness."""
