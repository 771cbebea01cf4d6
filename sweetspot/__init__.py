"""sweetspot: build DPO preference data the way recent research says to, and train on it."""

__version__ = "0.1.0"
