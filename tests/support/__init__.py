"""Helpers to build data with known answers (synthetic videos, DAVIS-layout fixtures)."""
