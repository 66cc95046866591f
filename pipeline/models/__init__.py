"""Model builders, one module per family; see :mod:`pipeline.models.registry`."""
