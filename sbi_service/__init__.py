"""sbi-service: an amortized posterior service for simulation-based inference."""

__version__ = "0.1.0"
