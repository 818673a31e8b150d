"""Storage: masks and metrics as Parquet, PNG import/export."""
