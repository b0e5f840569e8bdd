"""Engines: backup, restore, verify and maintenance as functions over typed configs."""
