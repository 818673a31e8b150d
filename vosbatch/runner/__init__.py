"""Execution: the predictor, Ray workers and the driver."""
