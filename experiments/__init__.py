"""Research notes with their code: `python -m experiments.<name>.<script>`; not a dependency of the pipeline."""
