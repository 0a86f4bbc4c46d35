"""STPrompt: weakly supervised video anomaly detection and localization with spatio-temporal prompts."""

__version__ = "0.1.0"
