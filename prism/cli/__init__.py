"""Command-line entry points: prism-train, prism-eval, prism-data, prism-plugins."""
