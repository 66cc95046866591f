"""Project scripts: `python -m scripts.results` (`make results`)."""
