"""Probe of the price information in the house photos beyond the table (see README.md)."""
