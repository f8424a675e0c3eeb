"""Tether: a real-time event gateway speaking the Centrifugo client protocol v2."""

__version__ = "0.1.0"
