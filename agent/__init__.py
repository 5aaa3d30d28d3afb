"""CaptaFlow: how a live chat feels, moment by moment, scored on the streamer's own CPU."""

__version__ = "1.0.0.dev0"
